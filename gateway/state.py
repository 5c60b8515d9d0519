"""What one worker's connections share: the ``Gateway`` (config, router, pools,
metrics, log, OpenAPI cache, open connections, lifecycle state, the trusted and
admin address checks, the view across workers).

Its own module so that ``protocol``, ``relay`` and ``admin`` reach the shared
state without importing ``server`` (which imports them to serve connections):
no import cycle, not even under ``TYPE_CHECKING`` (tests/test_imports.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from typing import Any, Protocol

from gateway import shared
from gateway.accesslog import Logger, Record
from gateway.api import Router
from gateway.config import Config
from gateway.metrics import Gauges, Metrics, process_stats
from gateway.openapi import OpenAPICache
from gateway.pool import Pool


class Connection(Protocol):
    """What the drain does with an open client connection (``protocol.ClientConnection``)."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


class Connections(set[Connection]):
    """The open client connections; ``empty`` is set whenever the last one goes (drain waits on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, conn: Connection) -> None:
        super().add(conn)
        self.empty.clear()

    def discard(self, conn: object) -> None:
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
