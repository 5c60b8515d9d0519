"""Bind, serve, drain: the gateway's lifecycle in one worker.

States: starting -> ok -> draining (``/health`` says which). Shutdown runs in
uvicorn's order: stop accepting, close idle connections, let busy ones
finish with ``Connection: close`` for up to ``GATEWAY_SHUTDOWN_TIMEOUT``,
abort what is left. Signals set an ``asyncio.Event`` (``add_signal_handler``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from gateway import __version__
from gateway.accesslog import Logger
from gateway.config import Config, authority
from gateway.protocol import ClientConnection
from gateway.state import Gateway

SWEEP_INTERVAL_S = 1.0
ACCEPT_BATCH = 512
ACCEPT_PAUSE_S = 0.5
LISTEN_BACKLOG = 4096


def listen_socket(config: Config) -> socket.socket:
    """The listening socket: SO_REUSEADDR, and SO_REUSEPORT when workers share the port."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.workers > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class GatewayServer:
    """One listening gateway on the running loop; ``start()`` then ``shutdown()``."""

    def __init__(self, config: Config, *, log: Logger | None = None, worker_id: int = 0) -> None:
        self.config = config
        self.gw = Gateway(
            config,
            log or Logger(access_log=config.access_log, level=config.log_level, recent_size=config.recent_size),
            worker_id,
        )
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._accept_paused: asyncio.TimerHandle | None = None
        self._attaching: set[asyncio.Task[None]] = set()  # accepted sockets being attached

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        self._sock = sock if sock is not None else listen_socket(self.config)
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)
        cfg = self.config
        self._schedule_sweep()
        self.gw.state = "ok"
        self.gw.log.event(
            "info",
            "started",
            version=__version__,
            listen=authority(cfg.host, self.port),
            worker=self.gw.worker_id,
            workers=cfg.workers,
            workers_reason=cfg.workers_reason,
            routes=[{"prefix": r.prefix, "service": r.name, "upstream": r.upstream.display} for r in cfg.routes],
            settings={
                "connect_timeout_s": cfg.connect_timeout_s,
                "upstream_timeout_s": cfg.upstream_timeout_s,
                "max_body_bytes": cfg.max_body_bytes,
                "max_header_bytes": cfg.max_header_bytes,
                "pool_max_connections": cfg.pool_max_connections,
                "pool_timeout_s": cfg.pool_timeout_s,
                "pool_idle_timeout_s": cfg.pool_idle_timeout_s,
                "client_header_timeout_s": cfg.client_header_timeout_s,
                "keepalive_timeout_s": cfg.keepalive_timeout_s,
                "max_connections": cfg.max_connections,
            },
        )

    def _accept(self) -> None:
        """Accept every pending connection (up to a batch) on each readiness.

        libuv accepts one connection per loop iteration; under load an
        iteration is long, so a burst of new clients would wait seconds in
        the kernel's queue (and time out). asyncio's own selector loop also
        accepts in a batch up to the backlog.
        """
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors (EMFILE/ENFILE) and the like: stop
                # accepting for a moment instead of spinning (asyncio does too).
                self.gw.log.event("error", "accept_failed", error=exc.strerror or repr(exc))
                loop.remove_reader(sock.fileno())
                self._accept_paused = loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return
            conn.setblocking(False)
            # The loop keeps only a weak reference to a task: hold it until it is done.
            task = loop.create_task(self._attach(conn))
            self._attaching.add(task)
            task.add_done_callback(self._attaching.discard)

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: ClientConnection(self.gw), conn)
        except OSError:  # the client is already gone
            conn.close()

    def _resume_accepting(self) -> None:
        self._accept_paused = None
        if self._sock is not None and self._sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    def _stop_accepting(self) -> None:
        if self._accept_paused is not None:
            self._accept_paused.cancel()
        if self._sock is not None and self._sock.fileno() >= 0:
            # Connections the kernel already completed are in flight from the
            # client's side: take them (they are answered with Connection:
            # close) rather than reset them by closing the queue under them.
            self._accept()
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()

        def sweep() -> None:
            now = loop.time()
            for pool in self.gw.pools.values():
                pool.sweep(now)
            if self.gw.shared_dir is not None:
                self.gw.publish()  # SWEEP_INTERVAL_S == shared.SNAPSHOT_INTERVAL_S
            self._sweeper = loop.call_later(SWEEP_INTERVAL_S, sweep)

        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, sweep)

    async def shutdown(self) -> None:
        gw = self.gw
        cfg = self.config
        gw.state = "draining"
        gw.log.event("info", "draining", drain_delay_s=cfg.drain_delay_s, worker=gw.worker_id)
        if cfg.drain_delay_s:
            await asyncio.sleep(cfg.drain_delay_s)
        self._stop_accepting()
        for conn in list(gw.connections):
            conn.shutdown()  # idle ones close now, busy ones once their answer is out
        try:
            async with asyncio.timeout(cfg.shutdown_timeout_s):
                while gw.connections:  # one accepted just as the last one left: wait again
                    await gw.connections.empty.wait()
        except TimeoutError:
            pass
        left = len(gw.connections)
        for conn in list(gw.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await gw.openapi.aclose()
        for pool in gw.pools.values():
            pool.close()
        if gw.shared_dir is not None:
            gw.publish()  # the last requests count, and the supervisor retires this file
        gw.log.event("info", "stopped", aborted_connections=left, worker=gw.worker_id)
        gw.log.flush()


async def serve(config: Config, *, worker_id: int = 0, sock: socket.socket | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return. A worker (``GATEWAY_WORKERS``
    above 1) whose supervisor is gone drains too, as if told SIGTERM: nothing else
    would ever stop or restart it (a supervisor killed with SIGKILL, say)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = GatewayServer(config, worker_id=worker_id)
    await server.start(sock)
    if config.workers > 1:
        _watch_supervisor(server.gw, os.getppid(), stop)
    await stop.wait()
    await server.shutdown()


def _watch_supervisor(gw: Gateway, supervisor: int, stop: asyncio.Event) -> None:
    """Check once per SWEEP_INTERVAL_S that the process that forked this worker is
    still its parent (an orphan is re-parented); if not, stop."""
    loop = asyncio.get_running_loop()

    def check() -> None:
        if os.getppid() != supervisor:
            gw.log.event("error", "supervisor_gone", worker=gw.worker_id, supervisor=supervisor)
            stop.set()
        elif not stop.is_set():
            loop.call_later(SWEEP_INTERVAL_S, check)

    loop.call_later(SWEEP_INTERVAL_S, check)
