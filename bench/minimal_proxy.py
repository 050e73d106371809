"""The benchmark's baseline: the least a Python proxy can do, forward bytes to one upstream and back.

One shared aiohttp ClientSession, no parsing, no auth, no accounting; SSE answers are relayed
chunk by chunk as they arrive. Run: ``python bench/minimal_proxy.py --port P --upstream http://127.0.0.1:U``.
"""

from __future__ import annotations

import argparse
import contextlib

import aiohttp
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def open_session(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        app[session_key] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close_session(app: web.Application) -> None:
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if auth := request.headers.get("Authorization"):
            headers["Authorization"] = auth
        async with request.app[session_key].request(
            request.method, upstream + request.path_qs, data=await request.read(), headers=headers
        ) as upstream_response:
            out_headers = {"Content-Type": upstream_response.headers.get("Content-Type", "application/json")}
            if upstream_response.content_type != "text/event-stream":
                body = await upstream_response.read()
                return web.Response(body=body, status=upstream_response.status, headers=out_headers)
            response = web.StreamResponse(status=upstream_response.status, headers=out_headers)
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9001 (no trailing slash)")
    args = parser.parse_args()
    loop = None
    with contextlib.suppress(ImportError):  # the same event loop as the gateway's (uvicorn picks uvloop too)
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        make_app(args.upstream.rstrip("/")), host=args.host, port=args.port, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
