"""Bind, serve, drain: the gateway's lifecycle in one worker.

States: starting -> ok -> draining (``/health`` says which). Shutdown runs in
uvicorn's order: stop accepting, close idle connections, let busy ones
finish with ``Connection: close`` for up to ``GATEWAY_SHUTDOWN_TIMEOUT``,
abort what is left. Signals set an ``asyncio.Event`` (``add_signal_handler``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import time
from typing import Any

from gateway import __version__, shared
from gateway.accesslog import Logger, Record
from gateway.api import Router
from gateway.config import Config, authority
from gateway.metrics import Gauges, Metrics, process_stats
from gateway.openapi import OpenAPICache
from gateway.pool import Pool
from gateway.protocol import ClientConnection

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


class Connections(set[ClientConnection]):
    """The open client connections; ``empty`` is set whenever the last one goes (drain waits on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, conn: ClientConnection) -> None:
        super().add(conn)
        self.empty.clear()

    def discard(self, conn: ClientConnection) -> None:
        super().discard(conn)
        if not self:
            self.empty.set()


class Gateway:
    """Everything one worker shares between its connections."""

    def __init__(self, config: Config, log: Logger, worker_id: int = 0) -> None:
        self.config = config
        self.log = log
        self.worker_id = worker_id
        self.router = Router(config.routes)
        self.pools = {
            route.name: Pool(
                route.upstream,
                max_connections=config.pool_max_connections,
                pool_timeout_s=config.pool_timeout_s,
                idle_timeout_s=config.pool_idle_timeout_s,
            )
            for route in config.routes
        }
        self.metrics = Metrics([route.name for route in config.routes])
        self.openapi = OpenAPICache(self.router)  # /api/gateway/openapi.json; refreshes only once asked for
        self.connections = Connections()
        self.state = "starting"
        self._trusted: dict[str, bool] = {}
        # Several workers: snapshots in the supervisor's directory (gateway.shared).
        self.shared_dir = shared.directory
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = 0.0
        if self.shared_dir is not None:  # a restarted worker's stats window starts from the totals so far
            self.metrics.seed_window(time.monotonic(), self.view().total.services)
        self._admin: dict[str, bool] = {}

    @property
    def draining(self) -> bool:
        return self.state == "draining"

    def is_trusted(self, ip: str) -> bool:
        trusted = self._trusted.get(ip)
        if trusted is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                trusted = False
            else:
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                trusted = any(addr in net for net in self.config.trusted_proxies)
            if len(self._trusted) > 4096:
                self._trusted.clear()
            self._trusted[ip] = trusted
        return trusted

    def gauges(self, process: bool = True) -> Gauges:
        _, rss, fds = process_stats() if process else (0.0, 0, 0)
        pools = {name: [pool.idle, pool.busy, pool.waiting] for name, pool in self.pools.items()}
        return Gauges(len(self.connections), self.metrics.in_flight, pools, rss, fds)

    def publish(self) -> dict[str, Any]:
        """Write this worker's snapshot (several workers only) and return it."""
        assert self.shared_dir is not None
        self.metrics.cpu_s = process_stats()[0]
        g = self.gauges()
        snap = {
            "worker": self.worker_id, "pid": os.getpid(), "metrics": self.metrics.to_dict(),
            "gauges": {"connections": g.connections, "in_flight": g.in_flight, "pools": g.pools,
                       "rss_bytes": g.rss_bytes, "open_fds": g.open_fds},
            "recent": [rec.as_dict() for rec in self.log.recent],
        }
        try:
            shared.write(self.shared_dir, shared.worker_file(os.getpid()), snap)
        except OSError as exc:
            self.log.event("warning", "snapshot_failed", error=exc.strerror or repr(exc))
        self._snapshot, self._snapshot_at = snap, time.monotonic()
        return snap

    def view(self, process: bool = False, recent: bool = False) -> shared.View:
        """What the operational endpoints report: this worker, or all of them
        (``process``: with the process_* figures, read from /proc; ``recent``:
        with this worker's recent requests, which several workers always share)."""
        names = list(self.metrics.services)
        if self.shared_dir is None:
            if process:
                self.metrics.cpu_s = process_stats()[0]
            records = [rec.as_dict() for rec in self.log.recent] if recent else []
            g = self.gauges(process)
            return shared.View([(self.worker_id, self.metrics, g)], self.metrics, g, records, 1, self.metrics.started)
        own = self._snapshot
        if own is None or time.monotonic() - self._snapshot_at > shared.FRESH_S:
            own = self.publish()
        docs = shared.read_all(self.shared_dir)
        docs[shared.worker_file(os.getpid())] = own
        return shared.merge(list(docs.values()), names, self.config.recent_size)
    def is_admin(self, ip: str) -> bool:
        """A client in GATEWAY_ADMIN_ALLOW (it may use the operational endpoints)."""
        return _member(ip, self.config.admin_allow, self._admin)

    def record(self, rec: Record) -> None:
        rec.end = now = time.perf_counter()
        upstream_s = rec.upstream_end - rec.upstream_start if rec.upstream_start else None
        self.metrics.record(
            rec.service, rec.method, rec.status, rec.error, now - rec.start, upstream_s,
            rec.bytes_in, rec.bytes_out, rec.start_wall,
        )
        self.log.access(rec)


def _member(ip: str, nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], cache: dict[str, bool]) -> bool:
    """``ip`` (a string as a peer or X-Forwarded-For gives it) in one of ``nets``; cached."""
    found = cache.get(ip)
    if found is None:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            found = False  # not an address (a forged or garbled X-Forwarded-For entry): never a member
        else:
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            found = any(addr in net for net in nets)
        if len(cache) > 4096:
            cache.clear()
        cache[ip] = found
    return found


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
            loop.create_task(self._attach(conn))

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
    """Run until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = GatewayServer(config, worker_id=worker_id)
    await server.start(sock)
    await stop.wait()
    await server.shutdown()
