"""``gateway check``: validate the configuration and probe every backend once.

For use before a deploy and in the CI of the users' own stacks. Per backend it
resolves the host, opens a connection, sends one keep-alive ``GET``, and then
watches how long the backend keeps the idle connection open, compared with
the pool's idle expiry (a backend that closes sooner makes the gateway retry
or, for non-idempotent requests, fail). Exit 0: all well; 1: a backend has a
problem; 2: configuration error (printed by the CLI).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

import h11

from gateway.config import Config, Route
from gateway.h11client import H11Client, IncompleteResponse

MAX_BODY_BYTES = 16 * 1024 * 1024  # the probe's answer is read whole, then dropped


@dataclass
class Probe:
    route: Route
    ok: bool
    detail: str


async def probe(route: Route, config: Config) -> Probe:
    up = route.upstream
    loop = asyncio.get_running_loop()
    try:
        await loop.getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Probe(route, False, f"cannot resolve {up.host!r}: {exc.strerror or exc}")
    started = time.perf_counter()
    try:
        client = await H11Client.connect(up.host, up.port, route.connect_timeout_s)
    except TimeoutError:
        return Probe(route, False, f"connect timed out after {route.connect_timeout_s:g}s")
    except OSError as exc:
        return Probe(route, False, f"cannot connect: {exc.strerror or exc}")
    target = (route.strip_to or b"") + b"/"
    try:
        try:
            response = await client.request(
                "GET",
                target,
                [("User-Agent", "gateway-check"), ("Accept", "*/*")],
                timeout_s=route.upstream_timeout_s,
                max_body_bytes=MAX_BODY_BYTES,
            )
        except IncompleteResponse as exc:
            if not exc.head_received:
                return Probe(route, False, "closed the connection without a response")
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000
        head = f"HTTP {response.status} in {elapsed_ms:.1f} ms"
        if not client.keep_alive:
            return Probe(route, True, f"{head}; keep-alive: off (the backend closes after each response)")
        expiry = config.pool_idle_timeout_s
        idle_started = time.perf_counter()
        try:
            async with asyncio.timeout(expiry + 1.0):
                data = await client.read_idle()
        except TimeoutError:
            kept = f"idle connection kept > {expiry + 1:g}s (pool idle expiry {expiry:g}s)"
            return Probe(route, True, f"{head}; keep-alive: {kept}")
        held = time.perf_counter() - idle_started
        if data:
            return Probe(route, False, f"{head}; sent unexpected bytes on an idle connection")
        if held < expiry:
            return Probe(
                route,
                False,
                f"{head}; keep-alive: backend closes idle connections after {held:.1f}s, before the pool's"
                f" idle expiry ({expiry:g}s): set GATEWAY_POOL_IDLE_TIMEOUT below {held:.1f}",
            )
        kept = f"idle connection kept {held:.1f}s (pool idle expiry {expiry:g}s)"
        return Probe(route, True, f"{head}; keep-alive: {kept}")
    except TimeoutError:
        return Probe(route, False, f"no response within {route.upstream_timeout_s:g}s")
    except (h11.RemoteProtocolError, OSError) as exc:
        return Probe(route, False, f"invalid or broken response: {exc}")
    finally:
        client.close()


async def check(config: Config) -> int:
    results = await asyncio.gather(*(probe(route, config) for route in config.routes))
    width = max((len(r.route.name) for r in results), default=0)
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        print(f"{mark} {result.route.name:<{width}}  {result.route.upstream.display}  {result.detail}", flush=True)
    return 0 if all(r.ok for r in results) else 1
