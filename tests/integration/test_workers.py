"""Workers (docs/workers.md): several worker processes are one gateway to the outside.

Real ``python -m gateway`` processes on loopback. Counts reach every worker's
view within about a second (snapshots): the tests poll for the condition with
a timeout, never sleep blindly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.backends import backend, free_port
from tests.integration.helpers import get_json, request, wait_for, wait_listening
from tests.integration.test_observability import fetch_metrics

ROOT = Path(__file__).resolve().parents[2]
LAG_S = 5.0  # snapshots are written every second; generous for a loaded machine


@contextmanager
def workers_process(
    preexec: Any = None, stdout: Any = None, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``python -m gateway`` with its output in a file (or ``stdout``); killed at the end if still running."""
    port = free_port()
    full_env = {**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                "GATEWAY_SERVICES": "service1", "GATEWAY_WORKERS": "2", **env}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "gateway.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=full_env,
                                    stdout=stdout or out, stderr=subprocess.DEVNULL, preexec_fn=preexec)
        try:
            wait_listening(proc, port, log_path.read_text)
            yield proc, port, log_path
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def events(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_path.read_bytes().splitlines() if b'"event"' in line]


def service1_total(port: int) -> float:
    return sum(s.value for s in fetch_metrics(port).get("gateway_requests_total", service="service1"))


def workers_answering(port: int) -> set[int]:
    """Which workers answer on fresh connections (the kernel spreads them)."""
    seen: set[int] = set()
    # A worker binds its listener when it has started, which on a loaded machine can be
    # well after the supervisor's start line: keep asking until both answered, or LAG_S x 10.
    deadline = time.monotonic() + 10 * LAG_S
    while len(seen) < 2 and time.monotonic() < deadline:
        seen.add(get_json(port, "/health")[1]["worker"])
    return seen


def test_every_scrape_and_every_recent_fetch_sees_all_workers_requests() -> None:
    """Workers: whichever worker answers, metrics, status, stats, services and recent report the
    traffic of all workers (at most a second behind)."""
    n = 40
    with backend() as be, workers_process(SERVICE1_URL=be.url) as (_, port, _):
        assert workers_answering(port) == {0, 1}
        for i in range(n):  # each on a fresh connection: both workers take some
            assert request(port, "GET", f"/api/service1/orders?i={i}")[0] == 200
        assert wait_for(lambda: service1_total(port) == n, LAG_S), service1_total(port)
        answered_by: set[int] = set()
        for _ in range(12):
            assert service1_total(port) == n
            _, doc = get_json(port, "/api/gateway/recent")
            assert len([r for r in doc["requests"] if r["service"] == "service1"]) == n
            _, doc = get_json(port, "/api/gateway/status")
            answered_by.add(doc["worker"])
            assert doc["services"]["service1"]["requests"] == n and doc["workers"] == 2
            _, doc = get_json(port, "/api/gateway/stats")
            assert doc["services"]["service1"]["total"]["requests"] == n
            _, doc = get_json(port, "/api/gateway/services")
            assert doc["services"][0]["state"]["last_success"] is not None
        assert answered_by == {0, 1}, "every view above came from one worker only"


def test_a_worker_killed_with_sigkill_loses_nothing_from_the_totals() -> None:
    """Workers: a worker that dies is restarted; what it had counted stays in the totals."""
    n = 30
    with backend() as be, workers_process(SERVICE1_URL=be.url) as (_, port, log_path):
        pids = wait_for(lambda: [e for e in events(log_path) if e["event"] == "supervisor_started"], LAG_S)[0]["pids"]
        assert workers_answering(port) == {0, 1}
        for i in range(n):
            assert request(port, "GET", f"/api/service1/orders?i={i}")[0] == 200
        assert wait_for(lambda: service1_total(port) == n, LAG_S)
        served = [get_json(port, "/api/gateway/status")[1]["requests_served"]]
        os.kill(pids[0], signal.SIGKILL)
        assert wait_for(lambda: any(e["event"] == "worker_died" for e in events(log_path)), LAG_S)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # across the restart, no scrape sees less
            assert service1_total(port) == n
            served.append(get_json(port, "/api/gateway/status")[1]["requests_served"])
        assert served == sorted(served), served
        assert wait_for(lambda: workers_answering(port) == {0, 1}, LAG_S), "the worker was not restarted"
        for i in range(n):
            assert request(port, "GET", f"/api/service1/orders?j={i}")[0] == 200
        assert wait_for(lambda: service1_total(port) == 2 * n, LAG_S), service1_total(port)
        _, doc = get_json(port, "/api/gateway/recent")
        assert len([r for r in doc["requests"] if r["service"] == "service1"]) == min(2 * n, 100)


def test_workers_whose_supervisor_is_killed_drain_and_exit() -> None:
    """Workers: a supervisor killed with SIGKILL cannot forward SIGTERM; its workers notice
    they were orphaned (within a sweep interval) and drain and exit rather than serve on
    unsupervised, holding the port."""
    with backend() as be, workers_process(SERVICE1_URL=be.url) as (proc, port, log_path):
        pids = wait_for(lambda: [e for e in events(log_path) if e["event"] == "supervisor_started"], LAG_S)[0]["pids"]
        assert workers_answering(port) == {0, 1}
        proc.kill()
        proc.wait(10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        assert wait_for(lambda: all(gone(pid) for pid in pids), 2 * LAG_S), "orphaned workers still running"
        assert len([e for e in events(log_path) if e["event"] == "supervisor_gone"]) == 2


def test_auto_under_a_one_cpu_affinity_starts_one_worker() -> None:
    """GATEWAY_WORKERS=auto counts the CPUs this process may use: with its affinity set to one
    CPU, one worker, and the start-up line says why."""
    cpu = min(os.sched_getaffinity(0))
    with workers_process(preexec=lambda: os.sched_setaffinity(0, {cpu}), GATEWAY_WORKERS="auto") as (proc, _, log_path):
        started = wait_for(lambda: [e for e in events(log_path) if e["event"] == "started"], LAG_S)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        kinds = [e["event"] for e in events(log_path)]
    assert "supervisor_started" not in kinds, kinds
    assert len(started) == 1 and started[0]["workers"] == 1, started
    assert "affinity" in started[0]["workers_reason"], started[0]


def test_a_502_from_a_dead_backend_is_counted_under_code_502(gateway_factory) -> None:
    """Workers: requests are counted by service, method and exact status code (502, not 5xx)."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    assert request(gw.port, "GET", "/api/service1/x")[0] == 502
    expo = wait_for(lambda: fetch_metrics(gw.port))
    assert expo.one("gateway_requests_total", service="service1", method="GET", code="502", worker="0") == 1


def test_access_lines_stay_whole_with_two_workers_on_one_pipe() -> None:
    """Logs: with two workers writing to one pipe under load, every line is whole JSON, at most
    PIPE_BUF (4096) bytes: long paths are cut to fit, lines never split nor interleaved."""
    read_fd, write_fd = os.pipe()
    lines: list[bytes] = []

    def reader() -> None:  # a slow reader: the pipe fills, and the writers block mid-write
        buf = b""
        with os.fdopen(read_fd, "rb", buffering=0) as f:
            while chunk := f.read(4096):
                buf += chunk
                *full, buf = buf.split(b"\n")
                lines.extend(full)
                time.sleep(0.0005)  # behaviour: a slow reader
        if buf:
            lines.append(buf)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    per_client, clients = 60, 6
    with backend() as be, workers_process(stdout=write_fd, SERVICE1_URL=be.url) as (proc, port, _):
        os.close(write_fd)

        def client(c: int) -> None:
            for i in range(per_client):
                size = 1500 if i % 2 else 5000  # ~3 KB lines, and lines cut from ~10 KB
                request(port, "GET", f"/api/service1/{c}-{i}-" + "p" * size)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    thread.join(20)
    access = []
    for line in lines:
        assert len(line) + 1 <= 4096, len(line)
        doc = json.loads(line)  # a split or interleaved line would not parse
        if "request_id" in doc and "event" not in doc:
            access.append(doc)
    assert len(access) == per_client * clients
    cut = [d for d in access if d["path"].endswith("...")]
    assert len(cut) == per_client * clients // 2


def test_resends_refused_added_latency_process_and_build_info_are_exported(gateway_factory) -> None:
    """Issue 11, metrics: resends (a reused connection closed under a GET), refused connections (over
    GATEWAY_MAX_CONNECTIONS), gateway-added latency, pool waiters, process_* and build info."""
    from gateway import __version__
    from tests.backends import raw_server
    from tests.integration.test_failures import answers_first_then_closes

    log: list[tuple[int, bytes]] = []
    with raw_server(answers_first_then_closes(log)) as port:
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_POOL_IDLE_TIMEOUT="30")
        assert request(gw.port, "GET", "/api/service1/a")[0] == 200
        assert request(gw.port, "GET", "/api/service1/b")[0] == 200  # went out twice
        expo = fetch_metrics(gw.port)
    assert expo.types["gateway_upstream_resends_total"] == "counter"
    assert expo.one("gateway_upstream_resends_total", service="service1") == 1
    assert expo.types["gateway_added_duration_seconds"] == "histogram"
    assert expo.one("gateway_added_duration_seconds_count", service="service1") == 2
    assert expo.one("gateway_pool_waiting", service="service1") == 0
    assert expo.one("gateway_build_info", version=__version__) == 1
    assert expo.types["process_cpu_seconds_total"] == "counter" and expo.one("process_cpu_seconds_total") > 0
    assert expo.one("process_resident_memory_bytes") > 1 << 20
    assert expo.one("process_open_fds") >= 3

    limited = gateway_factory(GATEWAY_MAX_CONNECTIONS="1")
    with socket.create_connection(("127.0.0.1", limited.port)) as held:
        assert wait_for(lambda: limited.call(lambda: len(limited.server.gw.connections)) == 1)
        with socket.create_connection(("127.0.0.1", limited.port)) as refused:
            refused.settimeout(5)
            assert refused.recv(1) == b""  # closed at once
        held.close()
    assert wait_for(lambda: limited.call(lambda: len(limited.server.gw.connections)) == 0)
    assert fetch_metrics(limited.port).one("gateway_connections_refused_total") == 1
