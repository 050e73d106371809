"""Tests of providers: the upstream HTTP client and every provider type."""
