"""Peer: a reverse proxy on aiohttp, as its users would write it.

``aiohttp.web`` serves, one ``aiohttp.ClientSession`` (its ``TCPConnector``
pools keep-alive connections, 100 by default) forwards, and bodies stream
both ways: the request body goes up as ``request.content``, the response
comes down through a ``StreamResponse`` in chunks. uvloop is used because
it is installed (aiohttp's docs recommend it); the access log is off, as it
is for the gateway in the benchmark.

    python benchmarks/peers/aiohttp_proxy.py --port 8081 --backend http://127.0.0.1:9001

Routes ``/api/service1/<rest>`` to ``<backend>/api/<rest>``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
}


def make_app(backend: str) -> web.Application:
    async def client_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            app["session"] = session
            yield

    async def proxy(request: web.Request) -> web.StreamResponse:
        url = f"{backend}/api/{request.match_info['rest']}"
        if request.query_string:
            url += "?" + request.query_string
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        headers.append(("X-Forwarded-For", request.remote or ""))
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/api/service1/{rest:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--backend", default="http://127.0.0.1:9001")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    import asyncio

    loop = loop_factory() if loop_factory else asyncio.new_event_loop()
    web.run_app(make_app(args.backend.rstrip("/")), host=args.host, port=args.port,
                access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
