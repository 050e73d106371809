"""The HTTP edge: parse, authenticate, shape errors."""
