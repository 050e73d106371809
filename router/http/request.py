"""One parsed request as fedrouter's own server runs it: what the protocol read, for the inference
entry, the ASGI bridge and the answer writers."""

from __future__ import annotations


class Request:
    __slots__ = ("body", "headers", "http11", "keep_alive", "method", "url")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        http11: bool = True,
    ) -> None:
        self.http11 = http11
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None
