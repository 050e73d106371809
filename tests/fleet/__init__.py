"""Tests of router.fleet: backend statistics, energy and carbon, prices."""
