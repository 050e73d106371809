"""Tests of router.sim: the simulated backend and the local model."""
