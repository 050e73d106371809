"""Tests of router.http: fedrouter's own HTTP/1.1 server."""
