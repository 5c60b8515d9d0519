"""Content-Length response bodies relayed socket to socket (relay_body): the same
framing, flow control, timeouts and desync rules as bodies h11 parses."""

from __future__ import annotations

import socket
import time

from tests.backends import (
    EVIL,
    RawConn,
    RawServer,
    fast_backend,
    read_request_body,
    read_request_head,
    running,
)
from tests.integration.helpers import read_until_closed, request

BIG = 3 * 1024 * 1024
BLOCK = bytes(range(256)) * 4096  # 1 MiB


def body_of(n: int) -> bytes:
    return (BLOCK * (n // len(BLOCK) + 1))[:n]


def big_handler(rc: RawConn, server: RawServer) -> None:
    """``/api/big-extra``: a 3 MiB Content-Length body with a whole second response
    glued to its end; ``/api/stall``: the head and 1 MiB of a 3 MiB body, then
    silence; anything else: a tagged 200."""
    while True:
        req = read_request_head(rc)
        if req is None:
            return
        read_request_body(rc, req)
        path = req.target.partition(b"?")[0]
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG
        if path == b"/api/big-extra":
            rc.sock.sendall(head + body_of(BIG) + EVIL)
        elif path == b"/api/stall":
            rc.sock.sendall(head + body_of(1024 * 1024))
            time.sleep(5)
            return
        else:
            rc.sock.sendall(b"HTTP/1.1 200 OK\r\nX-Tag: mine\r\nContent-Length: 4\r\n\r\nmine")


def test_bytes_past_a_streamed_body_never_reach_the_next_client(gateway_factory):
    """Issue 3, upstream desync, for a body relayed without h11: a second response glued to
    the end of a 3 MiB body is not sent on, and the connection is not reused."""
    with running(RawServer(big_handler)) as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_POOL_MAX_CONNECTIONS="1", GATEWAY_POOL_IDLE_TIMEOUT="30")
        status, headers, body = request(gw.port, "GET", "/api/service1/big-extra", timeout=10)
        assert status == 200
        assert headers["Content-Length"] == str(BIG)
        assert body == body_of(BIG)
        for _ in range(3):
            status, headers, body = request(gw.port, "GET", "/api/service1/mine")
            assert (status, headers.get("X-Tag"), body) == (200, "mine", b"mine")


def test_slow_client_gets_a_large_body_byte_exact(gateway_factory):
    """Flow control: a client that reads nothing for a while, then slowly, still gets every
    byte in order (the backend's socket is paused while the client's buffer is full)."""
    n = 24 * 1024 * 1024
    with running(fast_backend()) as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(b"GET /api/service1/bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
            time.sleep(0.5)
            data = bytearray()
            while True:
                end = data.find(b"\r\n\r\n")
                if end >= 0 and len(data) >= end + 4 + n:
                    break
                chunk = s.recv(256 * 1024)
                assert chunk, "connection closed early"
                data += chunk
                if len(data) < 4 * 1024 * 1024:
                    time.sleep(0.01)
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert len(body) == n
        assert body == body_of(n)


def test_backend_stalling_mid_body_closes_the_client_after_the_timeout(gateway_factory):
    """GATEWAY_UPSTREAM_TIMEOUT also bounds the silence inside a relayed body: the client
    gets the head and part of the body, then the connection ends (never a complete-looking
    response)."""
    with running(RawServer(big_handler)) as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_UPSTREAM_TIMEOUT="0.5")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(b"GET /api/service1/stall HTTP/1.1\r\nHost: t\r\n\r\n")
            started = time.monotonic()
            data, closed = read_until_closed(s, 4)
        assert closed, "the client connection stayed open after the backend stalled"
        assert time.monotonic() - started >= 0.5
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert 0 < len(body) < BIG


def test_client_leaving_mid_body_frees_the_upstream_connection(gateway_factory):
    """A client that closes while a large body is being relayed: the backend connection is
    closed (never reused half-read), the pool slot comes back, the next request works."""
    from tests.integration.test_failures import wait_pool_settled

    with running(fast_backend()) as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_POOL_MAX_CONNECTIONS="1")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /api/service1/bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (64 * 1024 * 1024))
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        wait_pool_settled(gw)
        status, _, body = request(gw.port, "GET", "/api/service1/bytes/1000")
        assert (status, body) == (200, body_of(1000))


def test_http10_client_and_head_requests_on_the_relay_path(gateway_factory):
    """An HTTP/1.0 client (h11 adds Connection: close: the general path) and a HEAD (a
    Content-Length and no body) both get exact framing."""
    with running(fast_backend()) as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /api/service1/bytes/300000 HTTP/1.0\r\n\r\n")
            data, closed = read_until_closed(s, 5)
        head, _, body = data.partition(b"\r\n\r\n")
        assert closed and head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
        assert body == body_of(300000)
        status, headers, body = request(gw.port, "HEAD", "/api/service1/bytes/5000")
        assert (status, headers["Content-Length"], body) == (200, "5000", b"")
        assert request(gw.port, "GET", "/api/service1/bytes/5")[2] == body_of(5)


def split_head_handler(rc: RawConn, server: RawServer) -> None:
    """The response head in two parts, 0.5 s apart."""
    while True:
        req = read_request_head(rc)
        if req is None:
            return
        read_request_body(rc, req)
        rc.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-")
        time.sleep(0.5)
        rc.sock.sendall(b"Length: 2\r\n\r\nok")


def test_head_in_pieces_is_waited_for_not_polled(gateway_factory):
    """A response head that arrives in two parts: the gateway waits for the rest (it
    does not spin on the part it holds) and answers once it is whole."""
    import resource

    with running(RawServer(split_head_handler)) as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        before = resource.getrusage(resource.RUSAGE_SELF)
        status, _, body = request(gw.port, "GET", "/api/service1/x")
        after = resource.getrusage(resource.RUSAGE_SELF)
        assert (status, body) == (200, b"ok")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        assert cpu < 0.25, f"{cpu:.2f} s of CPU while waiting 0.5 s for the rest of a head"
