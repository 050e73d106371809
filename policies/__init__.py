"""Routing policy: filter the candidates, score them, pick. Pure functions, no I/O."""
