"""Peer: a reverse proxy on FastAPI + httpx, as its users would write it.

The pattern from FastAPI's discussions and httpx's docs: one shared
``httpx.AsyncClient`` (its pool: 100 connections, 20 kept alive, by
default), ``client.send(request, stream=True)``, and the answer handed back
as a ``StreamingResponse`` over ``aiter_raw()`` that closes the upstream
response when done. The request body streams up from ``request.stream()``.
Served by uvicorn (uvloop when installed, as ``uvicorn.run`` picks it), one
process, access log off as for the gateway in the benchmark.

    python benchmarks/peers/fastapi_httpx_proxy.py --port 8082 --backend http://127.0.0.1:9001

Routes ``/api/service1/<rest>`` to ``<backend>/api/<rest>``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
}
BACKEND = os.environ.get("PROXY_BACKEND", "http://127.0.0.1:9001")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with httpx.AsyncClient(base_url=BACKEND) as client:
        app.state.client = client
        yield


app = FastAPI(lifespan=lifespan)


@app.api_route("/api/service1/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def proxy(request: Request, path: str) -> StreamingResponse:
    client: httpx.AsyncClient = request.app.state.client
    url = httpx.URL(path=f"/api/{path}", query=request.url.query.encode("utf-8"))
    headers = [(k, v) for k, v in request.headers.raw if k not in HOP_BY_HOP]
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    upstream_request = client.build_request(
        request.method, url, headers=headers, content=request.stream() if has_body else None
    )
    upstream = await client.send(upstream_request, stream=True)
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers={k: v for k, v in upstream.headers.items() if k.lower().encode() not in HOP_BY_HOP},
        background=BackgroundTask(upstream.aclose),
    )


def main() -> None:
    global BACKEND
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--backend", default=BACKEND)
    args = parser.parse_args()
    BACKEND = args.backend.rstrip("/")
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
