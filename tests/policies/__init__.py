"""Tests of policies: filters, scorers, pickers and selection."""
