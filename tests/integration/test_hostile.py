"""Public traffic is hostile (issue 10), over real loopback sockets.

Body admission (a slow upload never holds a backend connection, a malformed
body never reaches the backend), one resend for idempotent requests whose body
is still held, strict request framing (HTTP/1.0 with Transfer-Encoding, chunk
sizes, Host), and the operational endpoints kept to GATEWAY_ADMIN_ALLOW.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.backends import (
    RawServer,
    backend,
    fast_backend,
    flaky_keepalive_handler,
    raw_server,
    recorder,
    running,
)
from tests.integration.helpers import (
    error_json,
    read_until_closed,
    request,
    sentinel_request,
    wait_for,
)
from tests.integration.test_failures import _read_head, assert_error, wait_pool_settled


def connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def raw_exchange(port: int, data: bytes, timeout: float = 3) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh connection and read until the gateway closes it."""
    with connect(port) as s:
        s.sendall(data)
        return read_until_closed(s, timeout)


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1])


def body_of(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[2]


# =====================================================================================
# Body admission
# =====================================================================================
def test_slow_uploaders_never_starve_ordinary_gets(gateway_factory):
    """Forwarding, request bodies and the backend: a body is read (up to
    GATEWAY_REQUEST_BUFFER_BYTES) before a backend connection is taken, so twice as
    many slow uploaders as the pool has connections hold none of them: every GET from
    other clients is answered at once (well under GATEWAY_POOL_TIMEOUT, which is what
    a GET would wait for a connection the uploads held)."""
    pool_timeout_s = 4.0
    server = fast_backend()
    with running(server):
        gw = gateway_factory(SERVICE1_URL=server.url, GATEWAY_POOL_MAX_CONNECTIONS="4",
                             GATEWAY_POOL_TIMEOUT=str(pool_timeout_s))
        stop = threading.Event()
        uploaders = [connect(gw.port) for _ in range(8)]
        for s in uploaders:
            s.sendall(b"PUT /api/service1/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n")

        def dribble() -> None:
            while not stop.wait(0.25):
                for s in uploaders:
                    try:
                        s.sendall(b"x" * 16)
                    except OSError:
                        pass

        feeder = threading.Thread(target=dribble)
        feeder.start()
        try:
            # the uploads are under way: the gateway holds all eight client connections
            assert wait_for(lambda: gw.call(lambda: len(gw.server.gw.connections)) >= len(uploaders))
            latencies: list[tuple[int, float]] = []
            lock = threading.Lock()

            def get(k: int) -> None:
                t0 = time.monotonic()
                status, _, _body = request(gw.port, "GET", f"/api/service1/bytes/{k + 1}")
                with lock:
                    latencies.append((status, time.monotonic() - t0))

            threads = [threading.Thread(target=get, args=(k,)) for k in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(pool_timeout_s * 3)
        finally:
            stop.set()
            feeder.join(5)
            for s in uploaders:
                s.close()
        assert len(latencies) == 12
        assert all(status == 200 for status, _ in latencies), latencies
        slowest = max(t for _, t in latencies)
        assert slowest < pool_timeout_s / 2, f"a GET waited {slowest:.2f}s behind the slow uploads"
        assert server.uploads == []


def test_pause_in_request_body_is_408_then_close(gateway_factory):
    """Forwarding: between two reads of a body a client may pause at most
    GATEWAY_CLIENT_BODY_TIMEOUT; then 408 request_timeout (nothing answered yet) and
    close, long before GATEWAY_UPSTREAM_TIMEOUT; the backend sees nothing."""
    with recorder() as rec:
        body_timeout_s = 0.5
        gw = gateway_factory(SERVICE1_URL=rec.url, GATEWAY_CLIENT_BODY_TIMEOUT=str(body_timeout_s))
        t0 = time.monotonic()
        data, closed = raw_exchange(
            gw.port, b"POST /api/service1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789", timeout=5
        )
        took = time.monotonic() - t0
        assert closed and status_of(data) == 408, data
        assert error_json(body_of(data))["error"] == "request_timeout"
        assert body_timeout_s <= took < 6 * body_timeout_s, took
        assert rec.server is not None and rec.server.connections == 0


def test_large_body_goes_upstream_once_the_buffer_is_full_and_arrives_whole(gateway_factory):
    """Forwarding: a body larger than GATEWAY_REQUEST_BUFFER_BYTES goes upstream only
    once that many bytes are at hand, and the rest streams: the backend gets every byte."""
    server = fast_backend()
    with running(server):
        gw = gateway_factory(SERVICE1_URL=server.url, GATEWAY_REQUEST_BUFFER_BYTES="1024")
        with connect(gw.port) as s:
            s.sendall(b"POST /api/service1/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 300000\r\n"
                      b"Connection: close\r\n\r\n" + b"y" * 1000)
            # The client pauses mid-body. A sentinel request on another connection is answered after
            # the gateway has read these bytes: a connection taken for them would be a second one.
            sentinel_request(gw.port)
            assert server.connections == 1, "a backend connection was taken before 1024 body bytes were at hand"
            s.sendall(b"y" * 299_000)
            data, _ = read_until_closed(s)
        assert status_of(data) == 200 and body_of(data) == b"received 300000", data
        for size in (1023, 1024, 1025):
            status, _, body = request(gw.port, "POST", "/api/service1/upload", body=b"y" * size)
            assert (status, body) == (200, b"received %d" % size)
        chunked = b"".join(b"%x\r\n%s\r\n" % (n, b"z" * n) for n in (10, 2000, 70_000)) + b"0\r\n\r\n"
        with connect(gw.port) as s:
            s.sendall(b"POST /api/service1/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n" + chunked)
            data, _ = read_until_closed(s)
        assert status_of(data) == 200 and body_of(data) == b"received 72010", data


def test_expect_100_continue_is_answered_before_the_body_is_read(gateway_factory):
    """Forwarding: `Expect: 100-continue` is answered by the gateway, then the body is
    read whole before a backend connection is taken."""
    with recorder() as rec:
        gw = gateway_factory(SERVICE1_URL=rec.url)
        with connect(gw.port) as s:
            s.sendall(b"PUT /api/service1/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
                      b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            s.settimeout(3)
            first = s.recv(100)
            assert first.startswith(b"HTTP/1.1 100 "), first
            # The client pauses before its body. A sentinel request on another connection is answered
            # after the 100 was sent: a connection taken for this request would be a second one.
            sentinel_request(gw.port)
            assert rec.server is not None and rec.server.connections == 1, "connected before the body was read"
            s.sendall(b"hello")
            data, _ = read_until_closed(s)
        assert status_of(data) == 200 and body_of(data) == b"got 5", data
        assert [r.body for r in rec.requests] == [b"", b"hello"]  # the sentinel's, then this one


# =====================================================================================
# Resend: one, on a fresh connection, for idempotent requests with their body held
# =====================================================================================
def test_backend_closing_idle_connections_at_random_costs_no_put(gateway_factory):
    """Forwarding: when a backend's close races the request on a reused connection,
    an idempotent request whose body is still at hand (PUT, DELETE) goes out again,
    once, on a fresh connection: 300 PUTs with bodies from 10 clients, zero errors,
    and no request processed twice by the backend."""
    processed: collections.Counter[bytes] = collections.Counter()
    server = RawServer(flaky_keepalive_handler(7, processed, echo=True))
    errors: list[Any] = []
    lock = threading.Lock()
    with running(server):
        gw = gateway_factory(SERVICE1_URL=server.url, GATEWAY_POOL_IDLE_TIMEOUT="30")

        def client(k: int) -> None:
            for j in range(30):
                target = f"/api/service1/k{k}/{j}"
                payload = f"body-{k}-{j}".encode() * 20
                method = "DELETE" if j % 10 == 9 else "PUT"
                try:
                    status, _, body = request(gw.port, method, target, body=payload)
                except OSError as exc:
                    status, body = 0, repr(exc).encode()
                if status != 200 or body != f"/api/k{k}/{j} ".encode() + payload:
                    with lock:
                        errors.append((target, status, body[:200]))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, f"{len(errors)} of 300 requests failed, e.g. {errors[:5]}"
        assert len(processed) == 300
        twice = {t: n for t, n in processed.items() if n != 1}
        assert not twice, f"requests processed more than once: {twice}"
        assert server.connections > 50, "the backend did not churn connections as intended"


def closes_all_but_the_first(log: list[tuple[int, bytes]]) -> Callable[[socket.socket], None]:
    """Answers only the very first request it gets; every other request (on that
    connection or any later one) is read and left unanswered, the connection closed."""
    counter = iter(range(1_000_000))

    def handler(conn: socket.socket) -> None:
        conn_id = next(counter)
        buf = bytearray()
        with conn:
            while (head := _read_head(conn, buf)) is not None:
                log.append((conn_id, head.split(b"\r\n", 1)[0]))
                if len(log) > 1:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return handler


def test_put_is_resent_at_most_once(gateway_factory):
    """Forwarding: never more than one resend: a PUT whose reused connection closes
    unanswered goes out once more on a fresh connection; when that one closes too, 502."""
    log: list[tuple[int, bytes]] = []
    with raw_server(closes_all_but_the_first(log)) as port:
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_POOL_IDLE_TIMEOUT="30")
        assert request(gw.port, "GET", "/api/service1/a")[0] == 200
        assert_error(request(gw.port, "PUT", "/api/service1/doc", body=b'{"v": 1}'), 502, "bad_gateway")
        # A sentinel ordered after any (wrong) second resend: the next request to the same backend
        # (unanswered too, so 502). A resend goes out before the 502 is answered: it would come first.
        assert_error(request(gw.port, "GET", "/api/service1/after"), 502, "bad_gateway")
        assert wait_for(lambda: [line for _, line in log].count(b"GET /api/after HTTP/1.1") >= 1), log
        assert log[:3] == [(0, b"GET /api/a HTTP/1.1"), (0, b"PUT /api/doc HTTP/1.1"), (1, b"PUT /api/doc HTTP/1.1")]
        assert [line for _, line in log[3:]] in ([b"GET /api/after HTTP/1.1"], [b"GET /api/after HTTP/1.1"] * 2), log
        wait_pool_settled(gw)


# =====================================================================================
# Strict framing
# =====================================================================================
FRAMING_CASES = {
    "http10_with_transfer_encoding": (
        b"POST /api/service1/x HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk_size_over_16_hex_digits": (
        b"POST /api/service1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\n", 400),
    "chunk_size_not_hex": (
        b"POST /api/service1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhi\r\n", 400),
    "chunk_declared_over_the_body_limit": (
        b"POST /api/service1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n", 413),
    "host_with_a_space": (b"GET /api/service1/x HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host_with_a_bad_port": (b"GET /api/service1/x HTTP/1.1\r\nHost: a:b\r\n\r\n", 400),
    "host_bad_ip_literal": (b"GET /api/service1/x HTTP/1.1\r\nHost: [zz::1]\r\n\r\n", 400),
    "host_with_a_space_on_health": (b"GET /health HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", FRAMING_CASES.values(), ids=FRAMING_CASES.keys())
def test_faulty_framing_is_answered_at_once_then_close_and_nothing_reaches_the_backend(gateway_factory, case):
    """Request framing is strict (RFC 9112): HTTP/1.0 with Transfer-Encoding, a chunk
    size that is not hex of at most 16 digits, and an invalid Host are 400 and close; a
    chunk whose declared size alone is over the body limit is 413 at once. The backend
    gets no byte (not even a connection)."""
    data, expected = case
    with recorder() as rec:
        gw = gateway_factory(SERVICE1_URL=rec.url, GATEWAY_MAX_BODY_BYTES="65536")
        reply, closed = raw_exchange(gw.port, data, timeout=5)
        assert closed, reply
        assert status_of(reply) == expected, reply
        head = reply.partition(b"\r\n\r\n")[0].lower()
        assert b"connection: close" in head
        assert error_json(body_of(reply))["status"] == expected
        assert rec.server is not None and rec.server.connections == 0
        assert (rec.requests, rec.malformed, rec.truncated) == ([], [], [])


def test_valid_hosts_are_forwarded_invalid_ones_are_not(gateway_factory):
    """RFC 9112 3.2: Host is `uri-host [":" port]`: reg-name, IPv4, IP-literal pass, each
    with an optional port; `Host: a b` does not."""
    with recorder() as rec:
        gw = gateway_factory(SERVICE1_URL=rec.url)
        reply, closed = raw_exchange(gw.port, b"GET /api/service1/x HTTP/1.1\r\nHost: a b\r\n\r\n")
        assert closed and status_of(reply) == 400, reply
        for host in ("example.com", "example.com:8080", "10.0.0.1:80", "[::1]", "[2001:db8::1]:443", "a-b_c.~x"):
            reply, _ = raw_exchange(gw.port, f"GET /api/service1/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            assert status_of(reply) == 200, (host, reply)
        assert [r.header(b"host") for r in rec.requests] == [
            b"example.com", b"example.com:8080", b"10.0.0.1:80", b"[::1]", b"[2001:db8::1]:443", b"a-b_c.~x"]


def test_malformed_chunked_body_after_valid_chunks_reaches_nothing(gateway_factory):
    """Forwarding: a malformed body never reaches the backend: valid chunks followed by
    a bad chunk size (within GATEWAY_REQUEST_BUFFER_BYTES) are 400, and the backend gets
    zero bytes."""
    with recorder() as rec:
        gw = gateway_factory(SERVICE1_URL=rec.url)
        body = b"400\r\n" + b"a" * 1024 + b"\r\n" + b"5\r\nhello\r\nzz\r\n"
        reply, closed = raw_exchange(
            gw.port, b"PUT /api/service1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        assert closed and status_of(reply) == 400, reply
        assert rec.server is not None and rec.server.connections == 0


# =====================================================================================
# Operational endpoints
# =====================================================================================
OPERATIONAL = ["/api/gateway/services", "/api/gateway/metrics", "/api/gateway/recent",
               "/api/gateway/stats", "/api/gateway/"]
PUBLIC = ["/health", "/api/gateway/status", "/api/gateway/openapi.json", "/api/gateway/docs"]


@pytest.mark.parametrize("path", OPERATIONAL)
def test_operational_endpoint_through_trusted_proxy_for_a_public_client_is_403(gateway_factory, path):
    """Routing: operational endpoints only for GATEWAY_ADMIN_ALLOW, judged on the
    address the access log shows: behind a trusted proxy (loopback, by default), the
    nearest untrusted X-Forwarded-For entry. A public one gets 403 forbidden."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        for xff in ("203.0.113.9", "10.0.0.1, 203.0.113.9", "203.0.113.9, 127.0.0.2"):
            doc = assert_error(request(gw.port, "GET", path, headers={"X-Forwarded-For": xff}), 403, "forbidden")
            assert "203.0.113.9" in doc["message"]
        lines = [r for r in gw.log.access() if r["status"] == 403]
        assert lines and {r["client"] for r in lines} == {"203.0.113.9"}
        # Allowed: loopback itself, and a private client behind the trusted proxy.
        assert request(gw.port, "GET", path)[0] == 200
        assert request(gw.port, "GET", path, headers={"X-Forwarded-For": "192.168.1.7"})[0] == 200


@pytest.mark.parametrize("path", OPERATIONAL)
def test_untrusted_peer_forging_an_allowed_xff_gets_only_the_public_endpoints(gateway_factory, path):
    """Routing: from a peer that is no trusted proxy X-Forwarded-For means nothing: the
    peer itself (here loopback, outside GATEWAY_ADMIN_ALLOW) is judged, and gets 403 for
    an operational endpoint. `/health`, `/api/gateway/status`, `/api/gateway/openapi.json`
    and `/api/gateway/docs` stay public to every client."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_TRUSTED_PROXIES="192.0.2.0/24",
                             GATEWAY_ADMIN_ALLOW="10.0.0.0/8")
        for headers in ({"X-Forwarded-For": "10.1.2.3"}, {}):
            assert_error(request(gw.port, "GET", path, headers=headers), 403, "forbidden")
            for public in PUBLIC:
                result = request(gw.port, "GET", public, headers=headers)
                assert result[0] == 200, (public, result)


def test_api_gateway_without_slash_is_308_to_the_dashboard(gateway_factory):
    """Routing: `/api/gateway` (no slash) redirects (308) to the dashboard `/api/gateway/`."""
    gw = gateway_factory()
    status, headers, _ = request(gw.port, "GET", "/api/gateway")
    assert status == 308 and headers["Location"] == "/api/gateway/"
    status, headers, _ = request(gw.port, "GET", "/api/gateway?x=1")
    assert status == 308 and headers["Location"] == "/api/gateway/?x=1"
    assert_error(request(gw.port, "POST", "/api/gateway", body=b""), 405, "method_not_allowed")
    assert_error(request(gw.port, "GET", "/api/gateway", headers={"X-Forwarded-For": "203.0.113.9"}),
                 403, "forbidden")
