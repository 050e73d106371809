"""Tests of router.state: the stores, and replicas that share one."""
