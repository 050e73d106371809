"""The `fedrouter` command: serve, operator tools (keys, tenants, usage, exports) and the demo."""

from router.cli.main import app_factory, main

__all__ = ["app_factory", "main"]
