"""Bounded resources: slow and idle clients, the connection cap, big bodies in constant memory.

Issue 3: the gateway is public, so a client that sends its head a byte at a
time, never reads its response, or holds thousands of idle connections must
not cost it more than a bounded amount of time, sockets and memory, while
everyone else keeps being served.

Memory is measured on a real ``python -m gateway`` process: VmRSS sampled from
``/proc/<pid>/status`` during the transfer, plus the kernel's own peak (VmHWM,
reset at the start where the kernel allows it). Backends for big bodies are
raw sockets that stream from a 1 MiB block and count what they receive, so
the test measures the gateway, not the backend.
"""

from __future__ import annotations

import resource
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.backends import RawServer, backend, fast_backend, running
from tests.integration.helpers import (
    GatewayProcess,
    RssWatch,
    error_json,
    gateway_subprocess,
    get_json,
    parse_responses_strict,
    raise_nofile_limit,
    read_response,
    read_until_closed,
    request,
    wait_for,
)

MiB = 1024 * 1024
RSS_GROWTH_LIMIT_MIB = 30
BLOCK = bytes(range(256)) * 4096  # 1 MiB


def connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


# =====================================================================================
# Slow and idle clients (in-process gateway)
# =====================================================================================
def test_slowloris_is_cut_off_by_the_header_timeout_while_others_are_served(gateway_factory):
    """Issue 3, slow clients: 200 connections each sending one header byte every 0.5 s
    are all cut off (408 or close) by GATEWAY_CLIENT_HEADER_TIMEOUT=1 within 2 s of
    connecting, however steadily they trickle, while a normal client keeps getting 200s
    in well under a second each; the backend sees only the normal client's requests."""
    n = 200
    head = b"GET /api/service1/echo HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
    with backend() as be:
        header_timeout_s = 1.0
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_CLIENT_HEADER_TIMEOUT=str(header_timeout_s))
        normal: list[tuple[int, float]] = []
        stop = threading.Event()

        def normal_client() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status = request(gw.port, "GET", "/api/service1/echo", timeout=5)[0]
                except OSError:
                    status = 0
                normal.append((status, time.monotonic() - t0))
                stop.wait(0.05)

        sel = selectors.DefaultSelector()
        opened: dict[socket.socket, float] = {}
        closed_at: dict[socket.socket, float] = {}
        received: dict[socket.socket, bytes] = {}
        try:
            for _ in range(n):
                s = connect(gw.port)
                s.setblocking(False)
                opened[s] = time.monotonic()
                received[s] = b""
                sel.register(s, selectors.EVENT_READ)
            worker = threading.Thread(target=normal_client)
            worker.start()
            pos, next_send = 0, time.monotonic()
            deadline = time.monotonic() + 5 * header_timeout_s
            while len(closed_at) < n and time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_send:
                    for s in opened:
                        if s not in closed_at:
                            try:
                                s.send(head[pos : pos + 1])
                            except OSError:
                                pass  # reset: the read side will say so
                    pos += 1
                    next_send += 0.5
                for key, _ in sel.select(timeout=max(0.0, min(0.05, next_send - time.monotonic()))):
                    s = key.fileobj
                    try:
                        chunk = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        chunk = b""
                    if chunk:
                        received[s] += chunk
                    else:
                        closed_at[s] = time.monotonic()
                        sel.unregister(s)
            stop.set()
            worker.join(10)
        finally:
            stop.set()
            sel.close()
            for s in opened:
                s.close()
        assert len(closed_at) == n, f"{n - len(closed_at)} slow connections still open after {5 * header_timeout_s} s"
        slowest = max(closed_at[s] - opened[s] for s in opened)
        assert slowest < 2 * header_timeout_s, f"a slow connection lived {slowest:.2f} s"
        for data in received.values():
            if data:
                [(status, _, body)] = parse_responses_strict(data)
                assert status == 408 and error_json(body)["error"] == "request_timeout"
        assert len(normal) >= 5, normal
        assert {status for status, _ in normal} == {200}, normal
        assert max(latency for _, latency in normal) < header_timeout_s / 2, normal
        assert all(seen.header("X-Slow") is None for seen in be.seen)


def test_connection_cap_closes_the_next_connection_at_once(gateway_factory):
    """GATEWAY_MAX_CONNECTIONS (docs/hardening.md, All limits): past the cap a new connection is closed at
    once (the client reads EOF, no bytes), while the connections already open are still
    served; once one of them closes, a new one is accepted again."""
    with backend() as be:
        header_timeout_s = 2.0  # an idle connection would be closed at this timeout; past the cap, at once
        gw = gateway_factory(
            SERVICE1_URL=be.url, GATEWAY_MAX_CONNECTIONS="50", GATEWAY_CLIENT_HEADER_TIMEOUT=str(header_timeout_s)
        )
        socks = [connect(gw.port) for _ in range(50)]
        try:
            for s in socks:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            for s in socks:
                assert read_response(s, 3)[0] == 200
            with connect(gw.port) as extra:
                t0 = time.monotonic()
                data, closed = read_until_closed(extra, header_timeout_s)
                elapsed = time.monotonic() - t0
            assert closed and data == b"", (closed, data)
            assert elapsed < header_timeout_s / 2, elapsed
            for s in socks:
                s.sendall(b"GET /api/service1/echo HTTP/1.1\r\nHost: t\r\n\r\n")
            for s in socks:
                assert read_response(s, 5)[0] == 200
            socks.pop().close()
            assert wait_for(lambda: gw.call(lambda: len(gw.server.gw.connections)) < 50), \
                "the closed connection still counts"
            assert request(gw.port, "GET", "/api/service1/echo")[0] == 200
        finally:
            for s in socks:
                s.close()


def test_2000_idle_keepalive_connections_are_held_while_requests_succeed(gateway_factory):
    """Issue 3, idle clients: 2000 idle keep-alive connections (each after one request)
    are held at once, new clients' requests still succeed meanwhile, and every one of the
    idle connections is still open and served afterwards."""
    n = 2000
    raise_nofile_limit(2 * n + 1024)  # both ends live in this process
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        socks: list[socket.socket] = []
        try:
            for _ in range(n):
                socks.append(connect(gw.port))
            for s in socks:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            for s in socks:
                status, headers, _ = read_response(s, 5)
                assert status == 200 and headers.get("connection", "").lower() != "close"
            assert gw.call(lambda: len(gw.server.gw.connections)) >= n
            for _ in range(20):
                assert request(gw.port, "GET", "/api/service1/echo")[0] == 200
            for s in socks:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            for s in socks:
                assert read_response(s, 5)[0] == 200
        finally:
            for s in socks:
                s.close()


def test_open_file_soft_limit_is_raised_at_start_up():
    """GATEWAY_MAX_CONNECTIONS (docs/hardening.md, All limits): at start-up the gateway raises its open-file
    soft limit toward the hard limit (one descriptor per connection), so the default cap
    of 20000 connections is not silently cut to the usual soft limit of 1024."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"hard open-file limit is {hard}: nothing to raise")
    with running(fast_backend()) as be, gateway_subprocess(soft_nofile=1024, SERVICE1_URL=be.url) as gp:
        limits = Path(f"/proc/{gp.pid}/limits").read_text()
        [line] = [ln for ln in limits.splitlines() if ln.startswith("Max open files")]
        gw_soft = line.split()[3]
        wanted = 20000 + 1024 if hard == resource.RLIM_INFINITY else min(hard, 20000 + 1024)
        assert gw_soft == "unlimited" or int(gw_soft) >= min(wanted, 20000), line


# =====================================================================================
# Big bodies and slow readers (subprocess gateway, RSS measured)
# =====================================================================================
@contextmanager
def gateway_with_fast_backend(**env: str) -> Iterator[tuple[RawServer, GatewayProcess]]:
    """A fast raw backend and a real gateway process in front of it, warmed up (a few MiB
    each way) so the baseline RSS already includes the buffers any transfer needs."""
    with running(fast_backend()) as be, gateway_subprocess(SERVICE1_URL=be.url, **env) as gp:
        for _ in range(2):
            assert download(gp.port, 4 * MiB) == (200, 4 * MiB)
            assert upload(gp.port, 4 * MiB)[0] == 200

        def settled() -> bool:  # only the status request itself in flight, on its own connection
            status, doc = get_json(gp.port, "/api/gateway/status")
            return status == 200 and doc["requests_in_flight"] <= 1 and doc["connections"] <= 1

        assert wait_for(settled), "the warm-up transfers did not finish"
        yield be, gp


def download(port: int, n: int, pause_s: float = 0.0, deadline_s: float = 20) -> tuple[int, int]:
    """GET n bytes; with ``pause_s`` read nothing that long first. (status, bytes received)."""
    with connect(port, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        s.sendall(b"GET /api/service1/bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
        if pause_s:
            time.sleep(pause_s)  # behaviour: a slow reader that reads nothing for a while
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"closed before the head: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        got = len(rest)
        buf = bytearray(MiB)
        deadline = time.monotonic() + deadline_s
        while got < n:
            assert time.monotonic() < deadline, f"download too slow: {got} of {n} bytes"
            k = s.recv_into(buf)
            if not k:
                break
            got += k
        return status, got


def upload(port: int, n: int, chunked: bool = False) -> tuple[int, bytes, int]:
    """POST n bytes (Content-Length, or 1 MiB chunks), sending on a thread while reading
    the answer: (status, body, bytes sent)."""
    s = connect(port, timeout=20)
    sent = [0]

    def send() -> None:
        try:
            if chunked:
                s.sendall(b"POST /api/service1/upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                s.sendall(b"POST /api/service1/upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % n)
            view = memoryview(BLOCK)
            while sent[0] < n:
                piece = view[: min(len(view), n - sent[0])]
                if chunked:
                    s.sendall(b"%x\r\n" % len(piece))
                s.sendall(piece)
                if chunked:
                    s.sendall(b"\r\n")
                sent[0] += len(piece)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway answered and closed: the answer tells why

    sender = threading.Thread(target=send)
    sender.start()
    try:
        data, _ = read_until_closed_or_response(s, 30)
    finally:
        sender.join(30)
        s.close()
    assert not sender.is_alive()
    [(status, _, body)] = parse_responses_strict(data)
    return status, body, sent[0]


def read_until_closed_or_response(s: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Read one Content-Length-framed response (or until the peer closes)."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        if b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length" and len(rest) >= int(v):
                    return data, False
        left = deadline - time.monotonic()
        assert left > 0, f"no complete response in {timeout} s: {data[:300]!r}"
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def test_over_limit_chunked_upload_is_cut_with_413_in_bounded_memory():
    """Issue 3, big bodies: a ~300 MiB chunked upload against GATEWAY_MAX_BODY_BYTES=10 MiB
    is cut at the limit with 413 payload_too_large, the backend never receives a complete
    request, and the gateway's RSS does not grow (< 30 MiB over the warmed-up baseline)."""
    with gateway_with_fast_backend(GATEWAY_MAX_BODY_BYTES=str(10 * MiB)) as (be, gp):
        uploads_before = list(be.uploads)
        t0 = time.monotonic()
        with RssWatch(gp.pid) as rss:
            status, body, sent = upload(gp.port, 300 * MiB, chunked=True)
        elapsed = time.monotonic() - t0
        assert status == 413, body
        assert error_json(body)["error"] == "payload_too_large"
        assert be.uploads == uploads_before, "a complete over-limit request reached the backend"
        assert rss.growth_mib < RSS_GROWTH_LIMIT_MIB, f"RSS grew {rss.growth_mib:.1f} MiB (sent {sent / MiB:.0f} MiB)"
        assert elapsed < 15, elapsed


def test_1_gib_download_streams_in_constant_memory():
    """Issue 3, big bodies / docs/forwarding.md (bodies stream with bounded memory,
    whatever their size): a 1 GiB download arrives whole while the gateway's peak RSS
    stays within 30 MiB of its warmed-up baseline."""
    with gateway_with_fast_backend() as (_, gp):
        t0 = time.monotonic()
        with RssWatch(gp.pid) as rss:
            status, got = download(gp.port, 1024 * MiB)
        elapsed = time.monotonic() - t0
        assert (status, got) == (200, 1024 * MiB)
        assert rss.growth_mib < RSS_GROWTH_LIMIT_MIB, f"RSS grew {rss.growth_mib:.1f} MiB"
        assert elapsed < 15, f"1 GiB took {elapsed:.1f} s"


def test_near_limit_upload_streams_in_constant_memory():
    """Issue 3, big bodies: a 190 MiB upload under GATEWAY_MAX_BODY_BYTES=200 MiB passes
    whole (the backend counts every byte) while the gateway's peak RSS stays within
    30 MiB of its warmed-up baseline."""
    with gateway_with_fast_backend(GATEWAY_MAX_BODY_BYTES=str(200 * MiB)) as (be, gp):
        t0 = time.monotonic()
        with RssWatch(gp.pid) as rss:
            status, body, _sent = upload(gp.port, 190 * MiB)
        elapsed = time.monotonic() - t0
        assert status == 200, body
        assert body == b"received %d" % (190 * MiB)
        assert be.uploads[-1] == 190 * MiB
        assert rss.growth_mib < RSS_GROWTH_LIMIT_MIB, f"RSS grew {rss.growth_mib:.1f} MiB"
        assert elapsed < 15, elapsed


def test_client_that_does_not_read_holds_bounded_memory():
    """Issue 3, slow clients: a client that asks for 200 MiB and reads nothing for 3 s
    costs the gateway bounded memory (RSS < 30 MiB over baseline: backpressure stops
    reading from the backend), and the download is still whole once it reads."""
    with gateway_with_fast_backend() as (_, gp):
        result: dict[str, Any] = {}
        with RssWatch(gp.pid) as rss:
            status, got = download(gp.port, 200 * MiB, pause_s=3.0)
            result.update(status=status, got=got)
        assert (result["status"], result["got"]) == (200, 200 * MiB)
        assert rss.growth_mib < RSS_GROWTH_LIMIT_MIB, f"RSS grew {rss.growth_mib:.1f} MiB"



def test_10000_idle_keepalive_connections_on_a_gateway_process():
    """Issue 3: 10,000 idle keep-alive connections held at once by a gateway process while
    requests still succeed (the gateway in its own process, as in production, so each side
    has its own open-file limit)."""
    n = 10_000
    if raise_nofile_limit(n + 1024) < n + 100:
        pytest.skip("the open-file hard limit is below 10,100 on this machine")
    with backend() as be, gateway_subprocess(SERVICE1_URL=be.url, GATEWAY_ACCESS_LOG="off") as gp:
        socks: list[socket.socket] = []
        try:
            for _ in range(n):
                socks.append(connect(gp.port))
            for s in socks:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            for s in socks:
                assert read_response(s, 10)[0] == 200
            for _ in range(20):
                assert request(gp.port, "GET", "/api/service1/echo")[0] == 200
            status, doc = get_json(gp.port, "/api/gateway/status")
            assert status == 200 and doc["connections"] >= n
        finally:
            for s in socks:
                s.close()
