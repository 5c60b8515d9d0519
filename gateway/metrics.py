"""Counters and histograms, rendered as Prometheus text. No asyncio here.

Numbers are recorded once per request (from the access-log record) and are
exact: tests check them after a known sequence of requests.
"""

from __future__ import annotations

import bisect
import collections
import time
from dataclasses import dataclass, field
from typing import Any

# Seconds; Prometheus' defaults shifted down: a gateway's added time is sub-ms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The window of ``Metrics.window`` (and so of ``/api/gateway/stats``), seconds.
STATS_WINDOW_S = 60.0


# Failures that say something about the backend (not about the client).
BACKEND_ERRORS = frozenset({"bad_gateway", "gateway_timeout", "service_unavailable"})


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


def method_class(method: str) -> str:
    return method if method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS") else "other"


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


@dataclass(slots=True)
class ServiceState:
    """Passive backend state from real traffic only (CONTRACT.md, Routing)."""

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


class Metrics:
    def __init__(self, services: list[str]) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.services = {name: ServiceState() for name in services}
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight = 0
        self.served = 0
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
        key = (service or "", method_class(method), status_class(status))
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

    def window(self, now: float, window_s: float = STATS_WINDOW_S) -> tuple[float, dict[str, dict[str, Any]]]:
        """Per-service rate, error rate and latency over about the last ``window_s``.

        ``now`` is ``time.monotonic()``. Each call keeps a snapshot of the
        counters (at most one a second), and the figures are the difference
        from the oldest one still in the window: a dashboard polling every few
        seconds sees the last minute, not the process lifetime; before the
        first minute, or after a long pause in polling, the window is longer
        or shorter, and says so (the first snapshot is the process start).
        """
        current = {name: _Snapshot.of(state) for name, state in self.services.items()}
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

    def prometheus(self, pools: dict[str, Any], connections: int, worker: int) -> bytes:
        lines: list[str] = []
        add = lines.append
        w = f'worker="{worker}"'
        add("# HELP gateway_requests_total Requests answered, by service, method and status class.")
        add("# TYPE gateway_requests_total counter")
        for (service, method, cls), n in sorted(self.requests.items()):
            add(f'gateway_requests_total{{service="{service}",method="{method}",status="{cls}",{w}}} {n}')
        for metric, attr, help_ in (
            ("gateway_request_duration_seconds", "total", "Time from request head to last response byte."),
            ("gateway_upstream_duration_seconds", "upstream", "Time spent on the upstream exchange."),
        ):
            add(f"# HELP {metric} {help_}")
            add(f"# TYPE {metric} histogram")
            for name, state in self.services.items():
                hist: Histogram = getattr(state, attr)
                cumulative = 0
                for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    add(f'{metric}_bucket{{service="{name}",le="{le}",{w}}} {cumulative}')
                add(f'{metric}_sum{{service="{name}",{w}}} {hist.total:.6f}')
                add(f'{metric}_count{{service="{name}",{w}}} {hist.n}')
        add("# HELP gateway_open_connections Client connections open.")
        add("# TYPE gateway_open_connections gauge")
        add(f"gateway_open_connections{{{w}}} {connections}")
        add("# HELP gateway_requests_in_flight Requests being answered.")
        add("# TYPE gateway_requests_in_flight gauge")
        add(f"gateway_requests_in_flight{{{w}}} {self.in_flight}")
        add("# HELP gateway_pool_connections Upstream connections by state.")
        add("# TYPE gateway_pool_connections gauge")
        for name, pool in pools.items():
            add(f'gateway_pool_connections{{service="{name}",state="idle",{w}}} {pool.idle}')
            add(f'gateway_pool_connections{{service="{name}",state="busy",{w}}} {pool.busy}')
        add("# HELP gateway_bytes_total Body bytes relayed.")
        add("# TYPE gateway_bytes_total counter")
        add(f'gateway_bytes_total{{direction="in",{w}}} {self.bytes_in}')
        add(f'gateway_bytes_total{{direction="out",{w}}} {self.bytes_out}')
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
