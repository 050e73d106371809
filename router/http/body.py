"""Reading a request body from ASGI ``receive`` under a size limit, for inference served through
an ASGI server (fedrouter's own server buffers it while parsing, under the same limit)."""

from __future__ import annotations

from starlette.types import Receive, Scope

from router.errors import BodyTooLarge
from router.http.entry import ClientGone


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The body, read as it streams in; Content-Length is only a hint and is not trusted."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge(f"Request body is {value.decode()} bytes; the limit is {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client left while sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
