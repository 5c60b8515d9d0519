"""Fixtures: a real gateway on a loopback port, in its own thread and uvloop loop.

Tests talk to it with ordinary blocking clients (http.client, raw sockets),
the way a user would, while the gateway runs the same code as in production.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import uvloop

from gateway.accesslog import Logger
from gateway.config import from_env
from gateway.server import GatewayServer


class LogCapture(io.RawIOBase):
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._lock = threading.Lock()
        self._partial = b""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with self._lock:
            buf = self._partial + bytes(data)
            *full, self._partial = buf.split(b"\n")
            self.lines.extend(full)
        return len(data)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [orjson.loads(line) for line in self.lines if line]

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if "request_id" in r and "event" not in r]


@dataclass
class RunningGateway:
    server: GatewayServer
    loop: asyncio.AbstractEventLoop
    log: LogCapture
    errors: list[dict[str, Any]]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the gateway's loop and return its result (for inspection)."""
        fut: asyncio.Future[Any] = asyncio.run_coroutine_threadsafe(_call(fn), self.loop)
        return fut.result(5)


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def start_gateway(env: dict[str, str]) -> tuple[RunningGateway, Callable[[], None]]:
    """Start a gateway configured by ``env`` (as the environment would); returns (gateway, stop)."""
    config = from_env({"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": "0", **env})
    log = LogCapture()
    errors: list[dict[str, Any]] = []
    loop = uvloop.new_event_loop()
    # Any exception reaching the loop's default handler fails the test (issue: none may).
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    server = GatewayServer(
        config,
        log=Logger(access_log=config.access_log, level="debug", stream=log, recent_size=config.recent_size),
    )
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "gateway did not start"
    running = RunningGateway(server, loop, log, errors)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    return running, stop


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., RunningGateway]]:
    """``gateway_factory(SERVICE1_URL=..., GATEWAY_UPSTREAM_TIMEOUT="1")``."""
    stops: list[Callable[[], None]] = []
    running: list[RunningGateway] = []

    def factory(**env: str) -> RunningGateway:
        gw, stop = start_gateway({"GATEWAY_SERVICES": "service1", **env})
        stops.append(stop)
        running.append(gw)
        return gw

    yield factory
    for stop in stops:
        stop()
    for gw in running:
        assert not gw.errors, f"exceptions reached the event loop: {gw.errors}"
        internal = [r for r in gw.log.records() if r.get("level") == "error"]
        assert not internal, f"the gateway logged internal errors: {internal}"
