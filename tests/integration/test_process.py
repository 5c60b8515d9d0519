"""The gateway as users run it: a real process (``python -m gateway``) on uvloop."""

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

ROOT = Path(__file__).resolve().parents[2]


class GatewayPopen(subprocess.Popen[bytes]):
    """``python -m gateway`` with its stdout and stderr in files, not in pipes nobody reads
    while the test runs: a pipe holds 64 KiB (some 240 access lines), then write(2) blocks
    the worker that logs, and the workers share the one stdout. A blocked worker answers
    nothing, not even SIGTERM (its loop never runs the handler). A file always takes the
    output, as a container runtime reading the pipe does. Its own session, so the clean-up
    kills the workers along with the supervisor. ``communicate`` waits for the exit and
    returns both outputs, as with pipes."""

    def __init__(self, args: list[str], directory: Path, **kw: Any) -> None:
        self.out_path, self.err_path = directory / "stdout", directory / "stderr"
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            super().__init__(args, stdout=out, stderr=err, start_new_session=True, **kw)

    def communicate(self, input: bytes | None = None, timeout: float | None = None) -> tuple[bytes, bytes]:
        assert input is None
        self.wait(timeout)
        return self.out_path.read_bytes(), self.err_path.read_bytes()


@contextmanager
def gateway_process(**env: str) -> Iterator[tuple[GatewayPopen, int]]:
    port = free_port()
    full_env = {
        **os.environ,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_SERVICES": "service1",
        **env,
    }
    with tempfile.TemporaryDirectory() as tmp:
        proc = GatewayPopen([sys.executable, "-m", "gateway"], Path(tmp), cwd=ROOT, env=full_env)
        try:
            wait_listening(proc, port, proc.err_path.read_text)
            yield proc, port
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its workers
                proc.wait(10)


def test_process_serves_and_stops_cleanly_on_sigterm() -> None:
    """`python -m gateway` serves, logs JSON lines, and on SIGTERM exits 0 (docs/operations.md: health, drain)."""
    with backend() as be, gateway_process(SERVICE1_URL=be.url) as (proc, port):
        status, doc = get_json(port, "/health")
        assert status == 200 and doc["status"] == "ok"
        status, doc = get_json(port, "/api/service1/orders")
        assert status == 200 and doc["target"] == "/api/orders"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in out.decode().splitlines()]
        assert lines[0]["event"] == "started"
        access = [rec for rec in lines if "request_id" in rec]
        assert [rec["path"] for rec in access] == ["/health", "/api/service1/orders"]
        assert lines[-1]["event"] == "stopped"


def test_output_beyond_a_pipes_capacity_is_logged_whole_while_serving() -> None:
    """More access lines than a pipe holds (64 KiB): the gateway keeps answering, and every
    line reaches stdout whole and in order (one access line per request, docs/forwarding.md)."""
    n, path = 80, "/api/service1/" + "x" * 2000  # some 180 KB of access lines
    with backend() as be, gateway_process(SERVICE1_URL=be.url) as (proc, port):
        for i in range(n):
            assert request(port, "GET", f"{path}?i={i}")[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    assert len(out) > 2 * 64 * 1024
    access = [json.loads(line) for line in out.splitlines() if b"request_id" in line]
    assert [rec["path"] for rec in access] == [f"{path}?i={i}" for i in range(n)]


def test_sigterm_lets_the_request_in_flight_finish() -> None:
    """SIGTERM: requests in flight finish (with Connection: close), then exit code 0; no accepted request is dropped."""
    with backend() as be, gateway_process(SERVICE1_URL=be.url) as (proc, port):
        result: dict[str, object] = {}

        def slow() -> None:
            status, headers, body = request(port, "GET", "/api/service1/slow/1")
            result.update(status=status, connection=headers.get("Connection"), body=body)

        thread = threading.Thread(target=slow)
        thread.start()
        # the request is in flight at the backend (it records a request before its 1 s delay)
        assert wait_for(lambda: any(seen.target == "/api/slow/1" for seen in be.seen), 5)
        proc.send_signal(signal.SIGTERM)
        thread.join(10)
        proc.communicate(timeout=10)
        assert result["status"] == 200
        assert result["connection"] == "close"
        assert proc.returncode == 0


def test_health_says_draining_during_drain_delay() -> None:
    """After SIGTERM /health turns 503 "draining" at once while the gateway still accepts for GATEWAY_DRAIN_DELAY."""
    drain_delay_s = 1.0
    with backend() as be, gateway_process(SERVICE1_URL=be.url, GATEWAY_DRAIN_DELAY=str(drain_delay_s)) as (proc, port):
        proc.send_signal(signal.SIGTERM)
        # at once: well within the drain delay, while the listener is still open
        assert wait_for(lambda: get_json(port, "/health")[0] == 503, drain_delay_s / 2)
        status, doc = get_json(port, "/health")
        assert status == 503 and doc["status"] == "draining"
        status, _, _ = request(port, "GET", "/api/service1/x")
        assert status == 200  # still served while draining
        proc.communicate(timeout=10)
        assert proc.returncode == 0


def test_bad_configuration_exits_2_with_one_line() -> None:
    """A bad value stops start-up with one clear line naming the variable, exit code 2."""
    env = {**os.environ, "GATEWAY_UPSTREAM_TIMEOUT": "-1"}
    proc = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=20)
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "GATEWAY_UPSTREAM_TIMEOUT" in lines[0]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _workers_seen(port: int, attempts: int = 200) -> set[int]:
    seen = set()
    for _ in range(attempts):
        status, doc = get_json(port, "/health")
        assert status == 200
        seen.add(doc["worker"])
        if len(seen) == 2:
            break
    return seen


def _both_workers_answer(port: int) -> bool:
    """True once both workers answer. A worker answers from its first listen() on (its loop
    runs right after), so a request it times out is a failure, not a "not yet"."""
    return _workers_seen(port) == {0, 1}


def test_workers_share_the_port_survive_a_kill_and_drain_on_sigterm() -> None:
    """GATEWAY_WORKERS=N: N workers answer on one port (SO_REUSEPORT); a worker that dies is
    restarted; SIGTERM drains all and the supervisor exits 0."""
    with backend() as be, gateway_process(SERVICE1_URL=be.url, GATEWAY_WORKERS="2") as (proc, port):
        assert wait_for(lambda: len(_children(proc.pid)) >= 2, 10)
        assert wait_for(lambda: _both_workers_answer(port), 30), "both workers listening"
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(kids := _children(proc.pid)) == 2 and victim not in kids, 10)
        assert wait_for(lambda: _both_workers_answer(port), 30), "the restarted worker listening"
        status, _, _ = request(port, "GET", "/api/service1/x")
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        events = [json.loads(line).get("event") for line in out.decode().splitlines()]
        assert "worker_died" in events and events[-1] == "supervisor_stopped"


def test_workers_that_cannot_start_stop_the_supervisor() -> None:
    """A port already taken: the workers keep dying at start, the supervisor gives up with exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": "2",
               "GATEWAY_SERVICES": "service1"}
        proc = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=60)
        assert proc.returncode == 1
        assert b"cannot listen" in proc.stderr


def test_drain_under_steady_load_drops_no_accepted_request() -> None:
    """Under steady keep-alive load, SIGTERM (with GATEWAY_DRAIN_DELAY) loses no request the
    gateway accepted: every request on a connection it served gets a complete response;
    responses during the drain carry Connection: close. The one thing TCP allows is a
    connection completed by the kernel just as the listener closes: it is reset before
    the gateway ever sees it (nginx alike), so a first request on a fresh connection may
    fail then; a load balancer stops sending before that (GATEWAY_DRAIN_DELAY)."""
    import http.client

    # Access log off: this fixture reads the gateway's stdout only at the end.
    env = {"GATEWAY_DRAIN_DELAY": "0.5", "GATEWAY_ACCESS_LOG": "off"}
    with backend() as be, gateway_process(SERVICE1_URL=be.url, **env) as (proc, port):
        stop = threading.Event()
        outcomes = {"ok": 0, "close_header": 0, "reset_before_first_response": 0}
        dropped: list[str] = []
        lock = threading.Lock()

        def client() -> None:
            conn: http.client.HTTPConnection | None = None
            served = False  # has this connection answered a request yet?
            while not stop.is_set():
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    served = False
                    try:
                        conn.connect()
                    except ConnectionRefusedError:
                        conn = None
                        time.sleep(0.01)  # behaviour: a client retrying a refused connect
                        continue
                    except ConnectionResetError:
                        # The one case TCP allows (docstring), seen by connect() itself: the kernel
                        # completed the handshake, then reset it as the listener closed, before this
                        # thread (descheduled on a busy machine) read the outcome of its connect (a
                        # reset in SYN_SENT would be ECONNREFUSED: tcp_reset(), tcp_input.c).
                        with lock:
                            outcomes["reset_before_first_response"] += 1
                        conn = None
                        continue
                try:
                    conn.request("GET", "/api/service1/load")
                    resp = conn.getresponse()
                    body = resp.read()
                except (ConnectionError, http.client.HTTPException, OSError) as exc:
                    with lock:
                        if served:
                            dropped.append(repr(exc))
                        else:
                            outcomes["reset_before_first_response"] += 1
                    conn.close()
                    conn = None
                    continue
                served = True
                closing = resp.getheader("Connection", "").lower() == "close"
                with lock:
                    outcomes["ok"] += 1 if resp.status == 200 and body else 0
                    outcomes["close_header"] += closing
                if closing:
                    conn.close()
                    conn = None
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        assert wait_for(lambda: outcomes["ok"] >= 10, 10), "the load never got under way"
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        stop.set()
        for t in threads:
            t.join(10)
        proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert outcomes["ok"] > 20 and outcomes["close_header"] >= 1
        assert not dropped, f"requests on served connections were dropped: {dropped[:5]} ({outcomes})"
        assert outcomes["reset_before_first_response"] <= 4, outcomes
