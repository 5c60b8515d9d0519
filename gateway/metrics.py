"""Counters and histograms, rendered as Prometheus text. No asyncio here.

Numbers are recorded once per request (from the access-log record) and are
exact: tests check them after a known sequence of requests. With several
workers each one's ``Metrics`` travels as a snapshot (``to_dict``/``from_dict``,
see ``gateway.shared``) and ``add`` sums them: the hot path never pays for it.
"""

from __future__ import annotations

import bisect
import collections
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Seconds; Prometheus' defaults shifted down: a gateway's added time is sub-ms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The window of ``Metrics.window`` (and so of ``/api/gateway/stats``), seconds.
STATS_WINDOW_S = 60.0


# Failures that say something about the backend (not about the client).
BACKEND_ERRORS = frozenset({"bad_gateway", "gateway_timeout", "service_unavailable"})


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


def method_class(method: str) -> str:
    """The ``method`` label: a known method, else ``OTHER`` (labels stay bounded)."""
    return method if method in METHODS else "OTHER"


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.n += other.n

    def to_list(self) -> list[Any]:
        return [*self.counts, self.total]

    @classmethod
    def from_list(cls, data: list[Any]) -> Histogram:
        counts = [int(c) for c in data[:-1]]
        return cls(counts, float(data[-1]), sum(counts))


@dataclass(slots=True)
class ServiceState:
    """Passive backend state from real traffic only (docs/operations.md, Status)."""

    last_success: float | None = None
    last_error: dict[str, Any] | None = None
    consecutive_failures: int = 0
    requests: int = 0
    errors: int = 0
    total: Histogram = field(default_factory=Histogram)
    upstream: Histogram = field(default_factory=Histogram)
    # Gateway-added time of forwarded requests: total minus upstream (what
    # Server-Timing calls ``gateway``): parsing, routing, pool checkout, relaying.
    added: Histogram = field(default_factory=Histogram)

    def add(self, other: ServiceState) -> None:
        """Fold another worker's state in: counts add up; the passive state is the
        newest success and error, and the failures seen since that success."""
        last_success = max(self.last_success or 0.0, other.last_success or 0.0) or None
        failing = 0
        for part in (self, other):
            if part.consecutive_failures and part.last_error and part.last_error["ts"] > (last_success or 0.0):
                failing += part.consecutive_failures
        if other.last_error and (not self.last_error or other.last_error["ts"] > self.last_error["ts"]):
            self.last_error = other.last_error
        self.last_success, self.consecutive_failures = last_success, failing
        self.requests += other.requests
        self.errors += other.errors
        self.total.add(other.total)
        self.upstream.add(other.upstream)
        self.added.add(other.added)

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_success": self.last_success, "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures, "requests": self.requests, "errors": self.errors,
            "total": self.total.to_list(), "upstream": self.upstream.to_list(), "added": self.added.to_list(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceState:
        return cls(d["last_success"], d["last_error"], d["consecutive_failures"], d["requests"], d["errors"],
                   Histogram.from_list(d["total"]), Histogram.from_list(d["upstream"]), Histogram.from_list(d["added"]))


@dataclass(slots=True)
class Gauges:
    """One worker's instantaneous values, read when a snapshot or a scrape is made."""

    connections: int = 0
    in_flight: int = 0
    pools: dict[str, list[int]] = field(default_factory=dict)  # service -> [idle, busy, waiting]
    rss_bytes: int = 0
    open_fds: int = 0

    def add(self, other: Gauges) -> None:
        self.connections += other.connections
        self.in_flight += other.in_flight
        for name, values in other.pools.items():
            mine = self.pools.setdefault(name, [0, 0, 0])
            self.pools[name] = [a + b for a, b in zip(mine, values, strict=True)]
        self.rss_bytes += other.rss_bytes
        self.open_fds += other.open_fds


def process_stats() -> tuple[float, int, int]:
    """(CPU seconds, resident bytes, open fds) of this process, from /proc (zeros elsewhere)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        return time.process_time(), 0, 0
    return cpu_s, rss, fds


class Metrics:
    def __init__(self, services: list[str]) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.services = {name: ServiceState() for name in services}
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight = 0
        self.served = 0
        self.refused = 0  # connections closed at once: over GATEWAY_MAX_CONNECTIONS
        self.resends: dict[str, int] = {}  # per service: requests sent again on a fresh connection
        self.cpu_s = 0.0  # process CPU seconds; set when a snapshot is taken, summed over restarts
        # (monotonic time, counters) for ``window``; the first is the start, all zero.
        self._snapshots: collections.deque[tuple[float, dict[str, _Snapshot]]] = collections.deque(
            [(time.monotonic(), {name: _Snapshot.zero() for name in services})], maxlen=1024
        )

    def record(
        self,
        service: str | None,
        method: str,
        status: int,
        error: str | None,
        duration_s: float,
        upstream_s: float | None,
        bytes_in: int,
        bytes_out: int,
        wall: float,
    ) -> None:
        key = (service or "", method_class(method), status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.served += 1
        state = self.services.get(service) if service else None
        if state is None:
            return
        state.requests += 1
        state.total.observe(duration_s)
        if upstream_s is not None:
            state.upstream.observe(upstream_s)
            state.added.observe(max(duration_s - upstream_s, 0.0))
        if error in BACKEND_ERRORS or (error is None and status >= 500):
            state.errors += 1
            state.consecutive_failures += 1
            state.last_error = {"ts": wall, "error": error or "upstream_status", "status": status}
        elif error is None:
            state.last_success = wall
            state.consecutive_failures = 0

    def resent(self, service: str) -> None:
        """A request went out again on a fresh connection (relay's resend rule)."""
        self.resends[service] = self.resends.get(service, 0) + 1

    def add(self, other: Metrics) -> None:
        """Fold another worker's (or a retired worker's) counters into these."""
        self.started = min(self.started, other.started)
        for key, n in other.requests.items():
            self.requests[key] = self.requests.get(key, 0) + n
        for name, state in other.services.items():
            if name in self.services:
                self.services[name].add(state)
            else:
                self.services[name] = state
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.in_flight += other.in_flight
        self.served += other.served
        self.refused += other.refused
        for name, n in other.resends.items():
            self.resends[name] = self.resends.get(name, 0) + n
        self.cpu_s += other.cpu_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "requests": [[s, m, c, n] for (s, m, c), n in self.requests.items()],
            "services": {name: state.to_dict() for name, state in self.services.items()},
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "served": self.served,
            "refused": self.refused, "resends": self.resends, "cpu_s": self.cpu_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        m = cls([])
        m.started = d["started"]
        m.requests = {(s, meth, int(c)): n for s, meth, c, n in d["requests"]}
        m.services = {name: ServiceState.from_dict(v) for name, v in d["services"].items()}
        m.bytes_in, m.bytes_out, m.served = d["bytes_in"], d["bytes_out"], d["served"]
        m.refused, m.resends, m.cpu_s = d["refused"], dict(d["resends"]), d["cpu_s"]
        return m

    def window(self, now: float, window_s: float = STATS_WINDOW_S,
               services: dict[str, ServiceState] | None = None) -> tuple[float, dict[str, dict[str, Any]]]:
        """Per-service rate, error rate and latency over about the last ``window_s``.

        ``now`` is ``time.monotonic()``. Each call keeps a snapshot of the
        counters (at most one a second), and the figures are the difference
        from the oldest one still in the window: a dashboard polling every few
        seconds sees the last minute, not the process lifetime; before the
        first minute, or after a long pause in polling, the window is longer
        or shorter, and says so (the first snapshot is the process start).
        """
        current = {name: _Snapshot.of(state) for name, state in (services or self.services).items()}
        snaps = self._snapshots
        if not snaps or now - snaps[-1][0] >= 1.0:
            snaps.append((now, current))
        while len(snaps) > 1 and now - snaps[1][0] >= window_s:
            snaps.popleft()
        since, base = snaps[0]
        elapsed = max(now - since, 1e-3)
        out = {}
        for name, snap in current.items():
            old = base.get(name) or _Snapshot.zero()
            requests = snap.requests - old.requests
            errors = snap.errors - old.errors
            upstream = [a - b for a, b in zip(snap.upstream, old.upstream, strict=True)]
            added = [a - b for a, b in zip(snap.added, old.added, strict=True)]
            n_up = sum(upstream)
            out[name] = {
                "requests": requests,
                "errors": errors,
                "rate_per_s": round(requests / elapsed, 3),
                "error_rate": round(errors / requests, 4) if requests else None,
                "upstream_ms": _latency(upstream, snap.upstream_sum - old.upstream_sum, n_up),
                "gateway_ms": _latency(added, snap.added_sum - old.added_sum, sum(added)),
            }
        return round(elapsed, 3), out

    def seed_window(self, now: float, services: dict[str, ServiceState]) -> None:
        """Start the stats window from these (merged) counters instead of zero."""
        self._snapshots.clear()
        self._snapshots.append((now, {name: _Snapshot.of(state) for name, state in services.items()}))


def prometheus(workers: list[tuple[int, Metrics, Gauges]], version: str) -> bytes:
    """Prometheus text for every worker's series (``worker`` label), one family at a time."""
    lines: list[str] = []
    add = lines.append

    def family(name: str, kind: str, help_: str) -> None:
        add(f"# HELP {name} {help_}")
        add(f"# TYPE {name} {kind}")

    def per_worker(*families: tuple[str, str, str, Callable[[Metrics, Gauges], object]]) -> None:
        """Families with one sample per worker and no other label."""
        for name, kind, help_, value in families:
            family(name, kind, help_)
            for worker, m, g in workers:
                add(f'{name}{{worker="{worker}"}} {value(m, g)}')

    family("gateway_requests_total", "counter", "Requests answered, by service, method and status code.")
    for worker, m, _ in workers:
        for (service, method, code), n in sorted(m.requests.items()):
            add(f'gateway_requests_total{{service="{service}",method="{method}",code="{code}",worker="{worker}"}} {n}')
    for metric, attr, help_ in (
        ("gateway_request_duration_seconds", "total", "Time from request head to last response byte."),
        ("gateway_upstream_duration_seconds", "upstream", "Time spent on the upstream exchange."),
        ("gateway_added_duration_seconds", "added",
         "Gateway-added time of forwarded requests: duration minus upstream time."),
    ):
        family(metric, "histogram", help_)
        for worker, m, _ in workers:
            w = f'worker="{worker}"'
            for name, state in m.services.items():
                hist: Histogram = getattr(state, attr)
                cumulative = 0
                for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    add(f'{metric}_bucket{{service="{name}",le="{le}",{w}}} {cumulative}')
                add(f'{metric}_sum{{service="{name}",{w}}} {hist.total:.6f}')
                add(f'{metric}_count{{service="{name}",{w}}} {hist.n}')
    per_worker(("gateway_open_connections", "gauge", "Client connections open.", lambda m, g: g.connections),
               ("gateway_requests_in_flight", "gauge", "Requests being answered.", lambda m, g: g.in_flight))
    family("gateway_pool_connections", "gauge", "Upstream connections by state.")
    for worker, _, g in workers:
        for name, (idle, busy, _waiting) in g.pools.items():
            add(f'gateway_pool_connections{{service="{name}",state="idle",worker="{worker}"}} {idle}')
            add(f'gateway_pool_connections{{service="{name}",state="busy",worker="{worker}"}} {busy}')
    family("gateway_pool_waiting", "gauge", "Requests waiting for a pooled upstream connection.")
    for worker, _, g in workers:
        for name, (_idle, _busy, waiting) in g.pools.items():
            add(f'gateway_pool_waiting{{service="{name}",worker="{worker}"}} {waiting}')
    per_worker(("gateway_connections_refused_total", "counter",
                "Client connections closed at once: over GATEWAY_MAX_CONNECTIONS.", lambda m, g: m.refused))
    family("gateway_upstream_resends_total", "counter",
           "Requests sent again on a fresh connection after a reused one was closed under them.")
    for worker, m, _ in workers:
        for name in m.services:
            add(f'gateway_upstream_resends_total{{service="{name}",worker="{worker}"}} {m.resends.get(name, 0)}')
    family("gateway_bytes_total", "counter", "Body bytes relayed.")
    for worker, m, _ in workers:
        add(f'gateway_bytes_total{{direction="in",worker="{worker}"}} {m.bytes_in}')
        add(f'gateway_bytes_total{{direction="out",worker="{worker}"}} {m.bytes_out}')
    per_worker(
        ("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.",
         lambda m, g: f"{m.cpu_s:.2f}"),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", lambda m, g: g.rss_bytes),
        ("process_open_fds", "gauge", "Number of open file descriptors.", lambda m, g: g.open_fds),
    )
    family("gateway_build_info", "gauge", "Always 1; the version in a label.")
    for worker, _, _ in workers:
        add(f'gateway_build_info{{version="{version}",worker="{worker}"}} 1')
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True, slots=True)
class _Snapshot:
    requests: int
    errors: int
    upstream: tuple[int, ...]
    upstream_sum: float
    added: tuple[int, ...]
    added_sum: float

    @classmethod
    def of(cls, state: ServiceState) -> _Snapshot:
        return cls(state.requests, state.errors, tuple(state.upstream.counts), state.upstream.total,
                   tuple(state.added.counts), state.added.total)

    @classmethod
    def zero(cls) -> _Snapshot:
        empty = (0,) * (len(BUCKETS) + 1)
        return cls(0, 0, empty, 0.0, empty, 0.0)


def bucket_quantile(counts: list[int], q: float) -> float | None:
    """Quantile ``q`` of bucketed observations, interpolated linearly inside its
    bucket as Prometheus' ``histogram_quantile`` does (the +Inf bucket answers
    with the highest finite bound)."""
    n = sum(counts)
    if not n:
        return None
    rank = q * n
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(BUCKETS):
                return BUCKETS[-1]
            low = BUCKETS[i - 1] if i else 0.0
            return low + (BUCKETS[i] - low) * (rank - seen) / count
        seen += count
    return BUCKETS[-1]  # pragma: no cover


def _latency(counts: list[int], total_s: float, n: int) -> dict[str, float | None]:
    p50 = bucket_quantile(counts, 0.5)
    p99 = bucket_quantile(counts, 0.99)
    return {
        "p50": round(p50 * 1000, 3) if p50 is not None else None,
        "p99": round(p99 * 1000, 3) if p99 is not None else None,
        "mean": round(total_s / n * 1000, 3) if n else None,
    }
