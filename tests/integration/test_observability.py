"""Observability, checked with true numbers after a known scripted sequence (issue 4).

``/api/gateway/status``, ``/metrics`` (parsed as Prometheus text),
``/services``, ``/recent``, the JSON access and event lines, log settings as
a user sees them on a real process's stdout, the routes file end to end, W3C
trace headers and ``/health``.

What counts as a service *error* (status ``errors``, ``last_error``,
``consecutive_failures``): a 502/503/504 the gateway made for that service,
or a backend 5xx passed through. A backend 4xx is the backend answering
normally (like nginx's ``max_fails``, which by default counts only errors and
timeouts, never a 404). A gateway-owned or unrouted request belongs to no
service.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from gateway import __version__
from tests.backends import Backend, backend, free_port
from tests.integration.helpers import error_json, get_json, request, wait_for
from tests.integration.test_process import ROOT, gateway_process

# docs/forwarding.md, Logs. ``trace_id`` is allowed on top (docs/operations.md, tracing:
# the access log and recent carry trace_id).
LOG_KEYS = frozenset(
    {"ts", "request_id", "client", "method", "path", "service", "upstream", "status",
     "bytes_in", "bytes_out", "duration_ms", "upstream_ms", "error"}
)
OPTIONAL_LOG_KEYS = frozenset({"trace_id"})
RFC3339_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z\Z")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")


# --- small helpers --------------------------------------------------------------


def assert_rfc3339(value: Any, *, z: bool = False, near: tuple[float, float] | None = None) -> float:
    """``value`` is an RFC 3339 timestamp (ending in Z when ``z``), optionally within ``near``."""
    assert isinstance(value, str), value
    assert (RFC3339_Z if z else RFC3339).match(value), f"not RFC 3339: {value!r}"
    ts = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if near is not None:
        assert near[0] - 1 <= ts <= near[1] + 1, (value, near)
    return ts


def wait_no_connections(gw: Any) -> None:
    """Let the gateway see our closed client connections go, so gauges count only the next one."""
    assert wait_for(lambda: gw.call(lambda: len(gw.server.gw.connections)) == 0), "client connections linger"


def log_records(gw: Any) -> list[dict[str, Any]]:
    """Every line the gateway wrote, each parsed as a JSON object (pending lines flushed first)."""
    gw.call(gw.server.gw.log.flush)
    out = []
    for line in list(gw.log.lines):
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        out.append(doc)
    return out


def access_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "event" not in r]


# --- the scripted sequence ----------------------------------------------------------

POST_BODY = b'{"item":"pen","qty":3}'


@dataclass
class Step:
    method: str
    target: str
    body: bytes | None
    expect: int
    service: str | None  # the service it counts against
    forwarded: bool  # reaches a backend
    error: str | None  # the access log's error code
    status: int = 0
    headers: Any = None
    resp_body: bytes = b""


def script() -> list[Step]:
    return [
        Step("GET", "/api/service1/orders", None, 200, "service1", True, None),
        Step("GET", "/api/service1/orders?page=2", None, 200, "service1", True, None),
        Step("GET", "/api/service1/echo", None, 200, "service1", True, None),
        Step("POST", "/api/service1/status/201", POST_BODY, 201, "service1", True, None),
        Step("GET", "/api/service1/status/404", None, 404, "service1", True, None),
        Step("GET", "/api/service1/status/404", None, 404, "service1", True, None),
        Step("GET", "/api/service1/status/500", None, 500, "service1", True, None),
        Step("GET", "/api/nowhere/x", None, 404, None, False, "not_found"),
        Step("GET", "/api/service2/ping", None, 502, "service2", False, "bad_gateway"),
        Step("GET", "/health", None, 200, None, False, None),
    ]


@dataclass
class Scenario:
    gw: Any
    be: Backend
    dead_url: str
    steps: list[Step] = field(default_factory=list)


@contextmanager
def scripted(gateway_factory: Callable[..., Any], **env: str) -> Iterator[Scenario]:
    """service1 = a real backend, service2 = a refused port; the script run once, each request on its own
    connection, all closed before the caller looks."""
    with backend() as be:
        dead_url = f"http://127.0.0.1:{free_port()}"
        gw = gateway_factory(
            GATEWAY_SERVICES="service1,service2", SERVICE1_URL=be.url, SERVICE2_URL=dead_url, **env
        )
        sc = Scenario(gw, be, dead_url, script())
        for step in sc.steps:
            step.status, step.headers, step.resp_body = request(gw.port, step.method, step.target, body=step.body)
            assert step.status == step.expect, (step.target, step.status, step.resp_body)
        wait_no_connections(gw)
        yield sc


# --- a tiny Prometheus text-format (0.0.4) parser --------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN"
_SAMPLE_RE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?,?\}})? ({_VALUE})(?: -?\d+)?\Z")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_HELP_RE = re.compile(rf"# HELP ({_NAME}) .*\Z")
_TYPE_RE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)\Z")


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    family: str


@dataclass
class Exposition:
    types: dict[str, str]
    helps: set[str]
    samples: list[Sample]

    def get(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def one(self, name: str, **labels: str) -> float:
        found = self.get(name, **labels)
        assert len(found) == 1, (name, labels, found)
        return found[0].value


def parse_prometheus(text: str) -> Exposition:
    """Parse and validate: HELP/TYPE syntax, TYPE once and before its samples, a family's lines contiguous,
    label syntax, numeric values, no duplicate series, text ending in a newline."""
    assert text.endswith("\n"), "exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: list[Sample] = []
    seen_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    finished: set[str] = set()
    current: str | None = None
    for lineno, line in enumerate(text[:-1].split("\n"), start=1):
        where = f"line {lineno}: {line!r}"
        if not line.strip():
            continue
        if line.startswith("#"):
            if m := _HELP_RE.match(line):
                assert m.group(1) not in helps, f"second HELP, {where}"
                helps.add(m.group(1))
                family = m.group(1)
            elif m := _TYPE_RE.match(line):
                assert m.group(1) not in types, f"second TYPE, {where}"
                assert not any(s.family == m.group(1) for s in samples), f"TYPE after samples, {where}"
                types[m.group(1)] = m.group(2)
                family = m.group(1)
            else:
                assert not line.startswith(("# HELP", "# TYPE")), f"malformed HELP/TYPE, {where}"
                continue
        else:
            m = _SAMPLE_RE.match(line)
            assert m, f"malformed sample, {where}"
            name, label_text, value_text = m.group(1), m.group(2) or "", m.group(3)
            labels = dict(_LABEL_RE.findall(label_text))
            assert len(labels) == len(_LABEL_RE.findall(label_text)), f"duplicate label, {where}"
            family = name
            if name not in types:
                for suffix in ("_bucket", "_sum", "_count"):
                    base = name.removesuffix(suffix)
                    if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
                        family = base
            assert family in types, f"sample without a TYPE, {where}"
            series = (name, tuple(sorted(labels.items())))
            assert series not in seen_series, f"duplicate series, {where}"
            seen_series.add(series)
            samples.append(Sample(name, labels, float(value_text), family))
        if family != current:
            assert family not in finished, f"family {family} is not contiguous, {where}"
            if current is not None:
                finished.add(current)
            current = family
    return Exposition(types, helps, samples)


def fetch_metrics(port: int) -> Exposition:
    status, headers, body = request(port, "GET", "/api/gateway/metrics")
    assert status == 200
    ctype = headers["Content-Type"]
    assert ctype.split(";")[0].strip() == "text/plain", ctype
    assert "version=0.0.4" in ctype.replace(" ", ""), ctype
    return parse_prometheus(body.decode("utf-8"))


def histogram(expo: Exposition, metric: str, service: str) -> tuple[list[tuple[float, float]], float, float]:
    """(buckets as (le, cumulative count), sum, count), checked cumulative and ending at +Inf == count."""
    buckets = [(float(s.labels["le"]), s.value) for s in expo.get(f"{metric}_bucket", service=service)]
    assert buckets, f"no buckets for {metric} {service}"
    les = [le for le, _ in buckets]
    assert les == sorted(les) and len(set(les)) == len(les), les
    assert les[-1] == math.inf, "the last bucket must be le=+Inf"
    counts = [c for _, c in buckets]
    assert all(a <= b for a, b in itertools.pairwise(counts)), f"buckets not cumulative: {counts}"
    total = expo.one(f"{metric}_sum", service=service)
    count = expo.one(f"{metric}_count", service=service)
    assert counts[-1] == count, (counts[-1], count)
    return buckets, total, count


# --- /api/gateway/status ---------------------------------------------------------------


def test_status_numbers_are_exact_after_a_scripted_sequence(gateway_factory):
    """Issue 4 / docs/operations.md: /api/gateway/status gives version, uptime, worker, connections open,
    requests in flight and served, per-service requests and errors, pool idle/busy/waiting — true numbers.

    Errors per service = backend 5xx passed through + 502/503/504 the gateway made (module docstring);
    requests_served counts every request answered before this one (gateway endpoints and 404s included);
    requests_in_flight includes the status request itself.
    """
    with scripted(gateway_factory) as sc:
        status, doc = get_json(sc.gw.port, "/api/gateway/status")
        assert status == 200
        assert doc["version"] == __version__
        assert isinstance(doc["uptime_s"], int | float) and 0 <= doc["uptime_s"] < 60
        assert doc["worker"] == 0
        assert doc["connections"] == 1  # this request's own
        assert doc["requests_in_flight"] == 1  # this request
        assert doc["requests_served"] == len(sc.steps)
        services = doc["services"]
        assert set(services) == {"service1", "service2"}
        s1, s2 = services["service1"], services["service2"]
        assert (s1["requests"], s1["errors"]) == (7, 1), s1
        assert (s2["requests"], s2["errors"]) == (1, 1), s2
        # sequential requests reuse one pooled connection; the refused backend has none
        assert s1["pool"] == {"idle": 1, "busy": 0, "waiting": 0}, s1
        assert s2["pool"] == {"idle": 0, "busy": 0, "waiting": 0}, s2

        # the status request itself is now served too; uptime moves forward
        time.sleep(0.05)  # behaviour: time passes, so the uptime must grow
        _, again = get_json(sc.gw.port, "/api/gateway/status")
        assert again["requests_served"] == len(sc.steps) + 1
        assert again["uptime_s"] > doc["uptime_s"]
        assert again["services"]["service1"]["requests"] == 7


def test_status_counts_open_connections(gateway_factory):
    """Issue 4: status says how many client connections are open (idle keep-alive ones included)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        socks = []
        try:
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=3)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while b"}" not in data:  # the whole small JSON body
                    data += s.recv(65536)
                socks.append(s)  # kept open, idle
            _, doc = get_json(gw.port, "/api/gateway/status")
            assert doc["connections"] == 3
        finally:
            for s in socks:
                s.close()
        wait_no_connections(gw)
        _, doc = get_json(gw.port, "/api/gateway/status")
        assert doc["connections"] == 1


def test_in_flight_busy_and_waiting_while_requests_are_slow(gateway_factory):
    """Issue 4: requests in flight and pool busy/waiting are live numbers: two slow requests with a pool of
    one connection show in_flight 3 (with the status request), busy 1, waiting 1; afterwards 1/0/0."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_POOL_MAX_CONNECTIONS="1")
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(request(gw.port, "GET", "/api/service1/slow/0.6")[0]))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        assert wait_for(lambda: gw.call(lambda: gw.server.gw.pools["service1"].waiting) == 1)
        _, doc = get_json(gw.port, "/api/gateway/status")
        assert doc["requests_in_flight"] == 3
        assert doc["services"]["service1"]["pool"] == {"idle": 0, "busy": 1, "waiting": 1}
        expo = fetch_metrics(gw.port)
        assert expo.one("gateway_pool_connections", service="service1", state="busy") == 1
        assert expo.one("gateway_pool_connections", service="service1", state="idle") == 0
        for t in threads:
            t.join(10)
        assert results == [200, 200]
        _, doc = get_json(gw.port, "/api/gateway/status")
        assert doc["requests_in_flight"] == 1
        assert doc["services"]["service1"]["pool"] == {"idle": 1, "busy": 0, "waiting": 0}
        assert doc["services"]["service1"]["requests"] == 2


# --- /api/gateway/metrics ---------------------------------------------------------------


def test_metrics_are_valid_prometheus_text_with_exact_numbers(gateway_factory):
    """Issue 4 / docs/operations.md, docs/workers.md: /api/gateway/metrics is Prometheus text (0.0.4): request counter
    by service, method and exact status code; latency histograms (total and upstream) per service; open
    connections; pool idle/busy per service; bytes in/out — exact after the script; every sample says
    which worker answered."""
    with scripted(gateway_factory) as sc:
        expo = fetch_metrics(sc.gw.port)

        assert expo.samples
        for s in expo.samples:
            assert s.labels.get("worker") == "0", f"{s.name}{s.labels} has no worker label"
        assert set(expo.types) <= expo.helps, f"families without HELP: {set(expo.types) - expo.helps}"
        assert expo.types["gateway_requests_total"] == "counter"

        # requests by service, method and exact status code (a gateway 502 apart from a backend 500)
        counted: dict[tuple[str, str, str], float] = {}
        for s in expo.get("gateway_requests_total"):
            key = (s.labels["service"], s.labels["method"], s.labels["code"])
            counted[key] = counted.get(key, 0) + s.value
        routed = {k: v for k, v in counted.items() if k[0] in ("service1", "service2")}
        assert routed == {
            ("service1", "GET", "200"): 3,
            ("service1", "POST", "201"): 1,
            ("service1", "GET", "404"): 2,
            ("service1", "GET", "500"): 1,
            ("service2", "GET", "502"): 1,
        }, counted
        # the unknown route (404) and /health (200): whatever label says "no service"
        unrouted = {k: v for k, v in counted.items() if k[0] not in ("service1", "service2")}
        assert sorted((m, c, n) for (_, m, c), n in unrouted.items()) == [("GET", "200", 1), ("GET", "404", 1)]

        # latency histograms: total per service == the service's requests; upstream only when forwarded
        hist_types = {n: t for n, t in expo.types.items() if t == "histogram"}
        assert len(hist_types) >= 2, expo.types
        total_metric = next(n for n in hist_types if "upstream" not in n)
        upstream_metric = next(n for n in hist_types if "upstream" in n)
        _, s1_total, s1_count = histogram(expo, total_metric, "service1")
        _, s2_total, s2_count = histogram(expo, total_metric, "service2")
        assert (s1_count, s2_count) == (7, 1)
        assert s1_total > 0 and s2_total > 0
        _, s1_up_total, s1_up_count = histogram(expo, upstream_metric, "service1")
        _, _, s2_up_count = histogram(expo, upstream_metric, "service2")
        assert s1_up_count == 7
        assert s2_up_count == 0  # refused: nothing was exchanged with the backend
        assert 0 < s1_up_total <= s1_total

        # gauges: this request's own connection; the pool after sequential requests
        assert expo.types["gateway_open_connections"] == "gauge"
        assert expo.one("gateway_open_connections") == 1
        assert expo.types["gateway_pool_connections"] == "gauge"
        assert expo.one("gateway_pool_connections", service="service1", state="idle") == 1
        assert expo.one("gateway_pool_connections", service="service1", state="busy") == 0
        assert expo.one("gateway_pool_connections", service="service2", state="idle") == 0
        assert expo.one("gateway_pool_connections", service="service2", state="busy") == 0

        # body bytes: in = the one POST body; out = every response body the client got before this one
        assert expo.types["gateway_bytes_total"] == "counter"
        assert expo.one("gateway_bytes_total", direction="in") == len(POST_BODY)
        assert expo.one("gateway_bytes_total", direction="out") == sum(len(s.resp_body) for s in sc.steps)


# --- /api/gateway/services ---------------------------------------------------------------


def services_state(port: int) -> dict[str, dict[str, Any]]:
    status, doc = get_json(port, "/api/gateway/services")
    assert status == 200 and set(doc) == {"services"}
    out = {}
    for svc in doc["services"]:
        assert set(svc) == {"name", "prefix", "upstream", "state"}, svc
        assert set(svc["state"]) == {"last_success", "last_error", "consecutive_failures", "pool"}, svc
        out[svc["name"]] = svc
    return out


def test_services_state_tracks_failures_and_resets_after_success(gateway_factory):
    """docs/operations.md: /api/gateway/services state from real traffic only: last_success (RFC 3339 or
    null), last_error {ts, error, status} and consecutive_failures after failures (backend 500, refused
    502), reset to 0 by a success; pool {idle, busy}."""
    with backend() as be:
        dead_url = f"http://127.0.0.1:{free_port()}"
        gw = gateway_factory(GATEWAY_SERVICES="service1,service2", SERVICE1_URL=be.url, SERVICE2_URL=dead_url)
        t0 = time.time()
        state = services_state(gw.port)
        assert state["service1"]["prefix"] == "/api/service1" and state["service1"]["upstream"] == be.url
        assert state["service2"]["upstream"] == dead_url
        for name in ("service1", "service2"):
            assert state[name]["state"] == {
                "last_success": None, "last_error": None, "consecutive_failures": 0, "pool": {"idle": 0, "busy": 0}
            }, state[name]

        for _ in range(2):
            assert request(gw.port, "GET", "/api/service1/status/500")[0] == 500
        assert request(gw.port, "GET", "/api/service2/x")[0] == 502
        t1 = time.time()
        state = services_state(gw.port)
        s1, s2 = state["service1"]["state"], state["service2"]["state"]
        assert s1["consecutive_failures"] == 2 and s1["last_success"] is None
        assert set(s1["last_error"]) == {"ts", "error", "status"}
        assert s1["last_error"]["status"] == 500
        assert isinstance(s1["last_error"]["error"], str) and s1["last_error"]["error"]
        error_ts = assert_rfc3339(s1["last_error"]["ts"], near=(t0, t1))
        assert s1["pool"] == {"idle": 1, "busy": 0}
        assert s2["consecutive_failures"] == 1
        assert s2["last_error"]["error"] == "bad_gateway" and s2["last_error"]["status"] == 502
        assert_rfc3339(s2["last_error"]["ts"], near=(t0, t1))
        assert s2["pool"] == {"idle": 0, "busy": 0}

        time.sleep(0.01)  # behaviour: time passes, so the success is stamped after the error
        assert request(gw.port, "GET", "/api/service1/orders")[0] == 200
        t2 = time.time()
        s1 = services_state(gw.port)["service1"]["state"]
        assert s1["consecutive_failures"] == 0
        success_ts = assert_rfc3339(s1["last_success"], near=(t1, t2))
        assert success_ts >= error_ts
        assert s1["last_error"] is not None and s1["last_error"]["status"] == 500  # kept: the last one seen
        # service2 untouched by service1's traffic
        assert services_state(gw.port)["service2"]["state"]["consecutive_failures"] == 1


# --- /api/gateway/recent ---------------------------------------------------------------


def test_recent_is_newest_first_bounded_and_has_access_log_keys(gateway_factory):
    """docs/operations.md: /api/gateway/recent is {"requests": [...]}, newest first, at most
    GATEWAY_RECENT_SIZE entries, with the access log's keys (each equal to that request's log line)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_RECENT_SIZE="5")
        for i in range(8):
            status, headers, _ = request(gw.port, "GET", f"/api/service1/r{i}", headers={"X-Request-ID": f"recent-{i}"})
            assert status == 200 and headers["X-Request-ID"] == f"recent-{i}"
        status, doc = get_json(gw.port, "/api/gateway/recent")
        assert status == 200 and set(doc) == {"requests"}
        entries = doc["requests"]
        assert [e["request_id"] for e in entries] == [f"recent-{i}" for i in (7, 6, 5, 4, 3)]
        assert [e["path"] for e in entries] == [f"/api/service1/r{i}" for i in (7, 6, 5, 4, 3)]
        logged = {r["request_id"]: r for r in access_lines(log_records(gw))}
        for e in entries:
            assert LOG_KEYS <= set(e) <= LOG_KEYS | OPTIONAL_LOG_KEYS, set(e) ^ LOG_KEYS
            assert e == logged[e["request_id"]]


# --- access and event lines ----------------------------------------------------------------


def test_access_log_lines_are_exact_for_the_scripted_sequence(gateway_factory):
    """docs/forwarding.md, Logs: one JSON line per request with exactly ts (RFC 3339, Z), request_id (= the response's
    X-Request-ID = what the backend got), client, method, path, service (null when not routed), upstream
    (URL or null), status, bytes_in, bytes_out, duration_ms >= upstream_ms, upstream_ms (null when not
    forwarded), error (code or null)."""
    t0 = time.time()
    with scripted(gateway_factory) as sc:
        t1 = time.time()
        records = log_records(sc.gw)
        lines = access_lines(records)
        assert len(lines) == len(sc.steps), lines
        backend_ids = [seen.header("X-Request-ID") for seen in sc.be.seen]
        forwarded = [step for step in sc.steps if step.forwarded]
        assert len(backend_ids) == len(forwarded)
        for step, line in zip(sc.steps, lines, strict=True):
            where = f"{step.method} {step.target}: {line}"
            assert LOG_KEYS <= set(line) <= LOG_KEYS | OPTIONAL_LOG_KEYS, (set(line) ^ LOG_KEYS, where)
            assert_rfc3339(line["ts"], z=True, near=(t0, t1))
            assert line["request_id"] == step.headers["X-Request-ID"], where
            assert line["client"] == "127.0.0.1", where
            assert line["method"] == step.method, where
            assert line["path"] in (step.target, step.target.split("?", 1)[0]), where
            assert line["service"] == (step.service if step.service else None), where
            assert line["status"] == step.status, where
            assert line["bytes_in"] == len(step.body or b""), where
            assert line["bytes_out"] == len(step.resp_body), where
            assert line["error"] == step.error, where
            assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0, where
            if step.forwarded:
                rest = step.target.split("?", 1)[0].removeprefix("/api/service1")
                assert line["upstream"].startswith(f"{sc.be.url}/api{rest}"), where
                assert isinstance(line["upstream_ms"], int | float), where
                assert 0 <= line["upstream_ms"] <= line["duration_ms"], where
                assert line["request_id"] == backend_ids[forwarded.index(step)], where
            else:
                assert line["upstream_ms"] is None, where
                if step.service == "service2":  # routed, the connection refused: the URL it tried
                    assert line["upstream"] is None or line["upstream"].startswith(sc.dead_url), where
                else:
                    assert line["upstream"] is None, where
        # gateway-made error bodies carry the same request id
        nf = next(s for s in sc.steps if s.error == "not_found")
        assert error_json(nf.resp_body)["request_id"] == nf.headers["X-Request-ID"]


def test_started_and_upstream_error_event_lines(gateway_factory):
    """docs/forwarding.md, Logs: other lines (start-up, upstream connection errors) are JSON with ts, level, event;
    the start-up line lists the routes and settings (issue 4); one line per upstream connection error,
    none for a backend's own 5xx."""
    with scripted(gateway_factory) as sc:
        records = log_records(sc.gw)
        events = [r for r in records if "event" in r]
        for ev in events:
            assert {"ts", "level", "event"} <= set(ev), ev
            assert_rfc3339(ev["ts"])
            assert ev["level"] in ("debug", "info", "warning", "error"), ev
        started = records[0]
        assert started.get("event") == "started", records[0]
        assert started["level"] == "info"
        routes = started["routes"]
        assert isinstance(routes, list)
        by_prefix = {r["prefix"]: r for r in routes}
        assert set(by_prefix) == {"/api/service1", "/api/service2"}, routes
        assert sc.be.url in json.dumps(by_prefix["/api/service1"])
        assert sc.dead_url in json.dumps(by_prefix["/api/service2"])
        settings = started["settings"]
        assert isinstance(settings, dict) and settings, started
        assert any("timeout" in k for k in settings), settings

        upstream_errors = [ev for ev in events if ev["event"] == "upstream_error"]
        assert len(upstream_errors) == 1, upstream_errors  # the refused service2 request only
        assert upstream_errors[0]["level"] in ("warning", "error")


# --- W3C trace context and /health -----------------------------------------------------------


def test_traceparent_and_tracestate_reach_the_backend_unchanged(gateway_factory):
    """Issue 4: W3C traceparent/tracestate sent by the client are propagated unchanged to the backend."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, _, _ = request(
            gw.port, "GET", "/api/service1/orders", headers={"traceparent": traceparent, "tracestate": tracestate}
        )
        assert status == 200
        [seen] = be.seen
        assert seen.all("traceparent") == [traceparent]
        assert seen.all("tracestate") == [tracestate]


def test_health_reports_status_version_uptime_and_worker(gateway_factory):
    """Health (README.md, Operate) / issue 4: GET /health is 200 JSON {"status": "ok", ...} with version, uptime and
    worker id."""
    gw = gateway_factory()
    status, headers, body = request(gw.port, "GET", "/health")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert doc["version"] == __version__
    assert isinstance(doc["uptime_s"], int | float) and 0 <= doc["uptime_s"] < 60
    assert doc["worker"] == 0
    assert wait_for(lambda: get_json(gw.port, "/health")[1]["uptime_s"] > doc["uptime_s"]), "the uptime stands still"


# --- the real process: stdout, log settings ----------------------------------------------------


def stdout_records(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert all(isinstance(r, dict) for r in records)
    return records


def test_access_log_off_silences_request_lines_not_events():
    """Configuration (README.md): GATEWAY_ACCESS_LOG=off silences the per-request lines; event lines (started,
    upstream_error, stopped) still reach stdout."""
    with backend() as be, gateway_process(
        GATEWAY_SERVICES="service1,service2", SERVICE1_URL=be.url, SERVICE2_URL=f"http://127.0.0.1:{free_port()}",
        GATEWAY_ACCESS_LOG="off",
    ) as (proc, port):
        assert request(port, "GET", "/api/service1/orders")[0] == 200
        assert request(port, "GET", "/api/service2/x")[0] == 502
        assert request(port, "GET", "/health")[0] == 200
        records = stdout_records(proc)
    assert [r for r in records if "event" not in r] == []
    events = [r["event"] for r in records]
    assert events[0] == "started" and events[-1] == "stopped", events
    assert "upstream_error" in events


def test_log_level_error_hides_info_and_warning_events():
    """Configuration (README.md): GATEWAY_LOG_LEVEL is respected: at "error" no info line (no "started") and no
    warning (upstream_error). Access lines are governed by GATEWAY_ACCESS_LOG alone (nginx keeps access_log
    and error_log apart), so they stay."""
    with backend() as be, gateway_process(
        GATEWAY_SERVICES="service1,service2", SERVICE1_URL=be.url, SERVICE2_URL=f"http://127.0.0.1:{free_port()}",
        GATEWAY_LOG_LEVEL="error",
    ) as (proc, port):
        assert request(port, "GET", "/api/service1/orders")[0] == 200
        assert request(port, "GET", "/api/service2/x")[0] == 502
        records = stdout_records(proc)
    events = [r for r in records if "event" in r]
    assert events == [], events
    assert [r["path"] for r in records if "event" not in r] == ["/api/service1/orders", "/api/service2/x"]


def test_bogus_log_level_exits_2_with_one_line():
    """Configuration (README.md): a bad value stops start-up with one line naming the variable, exit code 2."""
    env = {**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": "0", "GATEWAY_LOG_LEVEL": "bogus"}
    proc = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=20)
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "GATEWAY_LOG_LEVEL" in lines[0], lines


# --- routes file end to end --------------------------------------------------------------------


def test_routes_file_prefix_base_path_timeout_and_body_limit(gateway_factory, tmp_path):
    """Routes file (docs/forwarding.md): /api/billing -> http://127.0.0.1:PORT/api; /api/billing/invoices?x=1 reaches
    /api/invoices?x=1; per-route max_body_bytes 100 (200 bytes -> 413, 100 bytes pass) and
    upstream_timeout 0.5 (a 2 s backend -> 504 well before 1.5 s)."""
    upstream_timeout_s = 0.5
    with backend() as be:
        routes = tmp_path / "routes.toml"
        routes.write_text(
            "[[route]]\n"
            'prefix = "/api/billing"\n'
            f'upstream = "{be.url}/api"\n'
            f"upstream_timeout = {upstream_timeout_s}\n"
            "max_body_bytes = 100\n"
        )
        gw = gateway_factory(GATEWAY_SERVICES="", GATEWAY_CONFIG=str(routes))

        status, doc = get_json(gw.port, "/api/billing/invoices?x=1")
        assert status == 200 and doc["target"] == "/api/invoices?x=1"

        status, _, body = request(gw.port, "POST", "/api/billing/invoices", body=b"x" * 200)
        assert status == 413 and error_json(body)["error"] == "payload_too_large"
        assert len(be.seen) == 1  # never forwarded
        status, _, _ = request(gw.port, "POST", "/api/billing/invoices", body=b"x" * 100)
        assert status == 200 and be.seen[-1].body == b"x" * 100

        t = time.monotonic()
        status, _, body = request(gw.port, "GET", f"/api/billing/slow/{4 * upstream_timeout_s}")
        elapsed = time.monotonic() - t
        assert status == 504 and error_json(body)["error"] == "gateway_timeout"
        assert 0.8 * upstream_timeout_s <= elapsed < 3 * upstream_timeout_s, elapsed

        [svc] = services_state(gw.port).values()
        assert svc["prefix"] == "/api/billing" and svc["upstream"] == f"{be.url}/api"
        started = log_records(gw)[0]
        assert started["event"] == "started"
        assert [r["prefix"] for r in started["routes"]] == ["/api/billing"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[route]]\nprefix = "/api/billing"\nupstream = \n', "line 3"),  # TOML syntax: the line
        ('[[route]]\nprefix = "/api/billing"\nupstream = "ftp://127.0.0.1:9/api"\n', "upstream"),
        ('[[route]]\nprefix = "/api/billing"\n', "upstream"),  # missing key
    ],
)
def test_invalid_routes_file_fails_start_up_with_exit_2(tmp_path, text, needle):
    """Routes file (docs/forwarding.md) / issue 4: an invalid routes file stops start-up: exit 2, one line on stderr naming
    GATEWAY_CONFIG, the file and the reason."""
    routes = tmp_path / "routes.toml"
    routes.write_text(text)
    env = {**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": "0", "GATEWAY_SERVICES": "service1",
           "GATEWAY_CONFIG": str(routes)}
    proc = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=20)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "GATEWAY_CONFIG" in lines[0] and str(routes) in lines[0] and needle in lines[0], lines[0]
