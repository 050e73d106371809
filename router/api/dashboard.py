"""GET /admin: the operator's dashboard, a static page whose script calls the admin API.

The page holds no data and needs no key; the operator types the admin key into it and every
figure it shows comes from /admin/v1/* under that key. Its three files are package data, read
once at import: they are immutable, so holding their bytes is not shared state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

# Same-origin only: the page loads nothing from elsewhere and may only talk to this gateway.
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _asset(name: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    body = (resources.files("router") / "static" / name).read_bytes()

    async def serve() -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return serve


router = APIRouter(include_in_schema=False)
router.add_api_route("/admin", _asset("admin.html", "text/html"), methods=["GET"])
router.add_api_route("/admin/admin.css", _asset("admin.css", "text/css"), methods=["GET"])
router.add_api_route("/admin/admin.js", _asset("admin.js", "text/javascript"), methods=["GET"])
