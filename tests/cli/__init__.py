"""Tests of router.cli: the fedrouter command, run as a user runs it."""
