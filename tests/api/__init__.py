"""Tests of router.api: the OpenAI-compatible and admin routes."""
