"""Forwarding over loopback: docs/forwarding.md (routing and forwarding, errors, logs).

A real gateway in front of real stdlib backends (``tests/backends.py``), and
raw-socket clients wherever the exact bytes on the wire matter (header case
and order, framing, pipelining, ``Expect: 100-continue``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from tests.backends import backend, raw_server
from tests.integration.helpers import error_json, request, split_responses, wait_for

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}\Z")
# What the gateway itself adds on the way up (Forwarding; traceparent: Extras, Tracing).
GATEWAY_ADDED = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix",
                 "x-request-id", "traceparent"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}
PATTERN = bytes(range(256))  # /api/bytes/<n> sends this block over and over


def pattern(n: int) -> bytes:
    return (PATTERN * (n // 256 + 1))[:n]


# --- a raw HTTP/1.1 client: exact bytes out, exact bytes in ------------------


@dataclass
class Response:
    status_line: bytes
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    informational: list[bytes] = field(default_factory=list)  # 1xx status lines seen before it

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times: {values}"
        return values[0] if values else None


class RawClient:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"connection closed; unparsed: {self.buf[:300]!r}")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> tuple[bytes, list[tuple[str, str]]]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = []
        for line in lines:
            k, _, v = line.partition(b":")
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        return status_line, headers

    def read_response(self, *, head_request: bool = False) -> Response:
        informational = []
        while True:
            status_line, headers = self.read_head()
            status = int(status_line.split()[1])
            if status >= 200:
                break
            informational.append(status_line)
        resp = Response(status_line, status, headers, b"", informational)
        if head_request or status in (204, 304):
            return resp
        te = resp.all("Transfer-Encoding")
        if te and "chunked" in te[-1].lower():
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exactly(size)
                assert self._exactly(2) == b"\r\n"
            resp.body = body
        elif resp.all("Content-Length"):
            resp.body = self._exactly(int(resp.all("Content-Length")[0]))
        else:
            resp.body = self.read_until_closed()
        return resp

    def read_until_closed(self, timeout: float = 3.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out


def exchange(port: int, data: bytes, *, head_request: bool = False) -> Response:
    with RawClient(port) as c:
        c.send(data)
        return c.read_response(head_request=head_request)


def http_request(method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """Request bytes exactly as given (names, case, order); Content-Length added for a body unless framed."""
    lines = [f"{method} {target} HTTP/1.1".encode()]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body



def end_to_end(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers that are neither hop-by-hop nor added by the gateway."""
    return [(k, v) for k, v in headers if k.lower() not in GATEWAY_ADDED | HOP_BY_HOP]


# --- method, headers ---------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_and_body_preserved(gateway_factory, method):
    """Forwarding: method, query and body pass unchanged."""
    body = f"payload for {method} \x00\xff".encode("latin-1")  # a GET or OPTIONS body passes too
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, _, resp = request(gw.port, method, "/api/service1/items/7?v=1", body=body)
        assert status == 200
        doc = json.loads(resp)
        assert doc["method"] == method
        (seen,) = be.seen
        assert (seen.method, seen.target, seen.body) == (method, "/api/items/7?v=1", body)


def test_request_headers_keep_order_case_and_duplicates(gateway_factory):
    """Forwarding: end-to-end request headers pass unchanged, order and duplicates kept."""
    sent = [
        ("Host", "example.test"),
        ("X-First", "1"),
        ("accept", "*/*"),
        ("X-Dup", "a"),
        ("Cookie", "c=1"),
        ("X-Dup", "b"),
        ("x-lower-case", "v"),
        ("X-DUP", "c"),
        ("Authorization", "Basic dXNlcjpwdw=="),
        ("X-Empty", ""),
        ("X-Latin", "caf\xe9 \"q\" \\ \t tab"),
        ("X-Last", "z, y"),
    ]
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        resp = exchange(gw.port, http_request("GET", "/api/service1/echo", [*sent, ("Connection", "close")]))
        assert resp.status == 200
        (seen,) = be.seen
        assert end_to_end(seen.headers) == sent


def test_response_headers_keep_order_and_duplicates(gateway_factory):
    """Forwarding: the backend's response headers reach the client unchanged: two Set-Cookie stay two, in order."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        conn.request("GET", "/api/service1/cookies")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status == 200 and body == b"{}"
        assert resp.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        # the whole list, compared with what the same backend says to a direct client
        direct = http.client.HTTPConnection("127.0.0.1", be.port, timeout=5)
        direct.request("GET", "/api/cookies")
        dresp = direct.getresponse()
        dresp.read()
        direct.close()
        via = [(k, "" if k == "Date" else v) for k, v in end_to_end(resp.getheaders())]
        want = [(k, "" if k == "Date" else v) for k, v in end_to_end(dresp.getheaders())]
        assert via == want


def test_hop_by_hop_request_headers_dropped(gateway_factory):
    """Forwarding: hop-by-hop headers (`Connection` and the names it lists, Keep-Alive, Proxy-*, TE, Trailer, Upgrade)
    are dropped.
    """
    sent = [
        ("Host", "example.test"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "1"),
        ("Keep-Alive", "timeout=300"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("X-Kept", "yes"),
    ]
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        resp = exchange(gw.port, http_request("GET", "/api/service1/echo", sent))
        assert resp.status == 200
        (seen,) = be.seen
        names = {k.lower() for k, _ in seen.headers}
        assert not names & {"x-secret", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer"}
        for value in seen.all("Connection"):
            assert "x-secret" not in value.lower(), value
        assert seen.all("X-Kept") == ["yes"]


def test_upgrade_request_header_dropped(gateway_factory):
    """Forwarding: `Upgrade` is hop-by-hop: dropped on the way up, and the request is still served as plain HTTP."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        resp = exchange(gw.port, http_request("GET", "/api/service1/echo",
                                              [("Host", "h"), ("Upgrade", "websocket"), ("Connection", "close")]))
        assert resp.status == 200
        (seen,) = be.seen
        assert seen.all("Upgrade") == []


HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Connection: keep-alive, X-Internal\r\n"
    b"X-Internal: secret\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n"
    b"Proxy-Authenticate: Basic realm=\"inner\"\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Trailer: X-Checksum\r\n"
    b"Upgrade: h2c\r\n"
    b"X-Request-ID: made-by-backend\r\n"
    b"X-Kept: yes\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"Content-Length: 2\r\n"
    b"\r\n"
    b"ok"
)


@contextmanager
def canned_backend(response: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A raw keep-alive backend answering every (bodiless) request with ``response``; records request heads."""
    heads: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                heads.append(head)
                conn.sendall(response)
        except OSError:
            return

    with raw_server(handle) as port:
        yield port, heads


def test_hop_by_hop_response_headers_dropped(gateway_factory):
    """Forwarding: hop-by-hop response headers, names listed in `Connection` included, are dropped; the rest kept in
    order.
    """
    with canned_backend(HOP_RESPONSE) as (port, _):
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}")
        resp = exchange(gw.port, http_request("GET", "/api/service1/x", [("Host", "h")]))
        assert resp.status == 200 and resp.body == b"ok"
        names = {k.lower() for k, _ in resp.headers}
        assert not names & {"x-internal", "keep-alive", "proxy-authenticate", "proxy-connection", "trailer", "upgrade"}
        for value in resp.all("Connection"):
            assert "x-internal" not in value.lower(), value
        e2e = ("content-type", "x-kept", "set-cookie", "content-length")
        kept = [(k, v) for k, v in resp.headers if k.lower() in e2e]
        assert kept == [("Content-Type", "text/plain"), ("X-Kept", "yes"), ("Set-Cookie", "a=1"),
                        ("Set-Cookie", "b=2"), ("Content-Length", "2")]


def test_response_request_id_is_the_forwarded_one(gateway_factory):
    """Forwarding: the response carries the same `X-Request-ID` that went upstream (once), whatever the backend sent."""
    with canned_backend(HOP_RESPONSE) as (port, heads):
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}")
        resp = exchange(gw.port, http_request("GET", "/api/service1/x", [("Host", "h")]))
        (head,) = heads
        upstream_ids = re.findall(rb"(?im)^x-request-id:[ \t]*(\S+)", head)
        assert len(upstream_ids) == 1
        assert resp.all("X-Request-ID") == [upstream_ids[0].decode()]


def test_host_passed_as_sent_and_forwarded_headers_added(gateway_factory):
    """Forwarding: `Host` is passed as the client sent it; X-Forwarded-For/Proto/Host/Prefix and X-Request-ID are
    added.
    """
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        resp = exchange(gw.port, http_request("GET", "/api/service1/echo", [("Host", "Public.Example:8443")]))
        assert resp.status == 200
        (seen,) = be.seen
        assert seen.all("Host") == ["Public.Example:8443"]
        assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.all("X-Forwarded-Proto") == ["http"]
        assert seen.all("X-Forwarded-Host") == ["Public.Example:8443"]
        assert seen.all("X-Forwarded-Prefix") == ["/api/service1"]
        (rid,) = seen.all("X-Request-ID")
        assert REQUEST_ID_RE.match(rid)
        assert resp.all("X-Request-ID") == [rid]


def test_request_ids_are_unique_per_request(gateway_factory):
    """Forwarding: without a client X-Request-ID one is generated for each request."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        ids = [request(gw.port, "GET", "/api/service1/echo")[1]["X-Request-ID"] for _ in range(20)]
        assert len(set(ids)) == 20
        assert [s.header("X-Request-ID") for s in be.seen] == ids


@pytest.mark.parametrize(
    "rid",
    ["a", "x" * 128, "0aB.-_:+=/9", "under_score", "3f2b8c1e-6d4a-4e1f-9c2b-7a5d1e0f3b9c", "trace:span/1+2=3.4-5"],
)
def test_valid_client_request_id_kept_and_echoed(gateway_factory, rid):
    """Forwarding: a client X-Request-ID of 1-128 chars from `A-Za-z0-9._:+=/-` is kept upstream and on the response."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, headers, _ = request(gw.port, "GET", "/api/service1/echo", headers={"X-Request-ID": rid})
        assert status == 200
        assert be.seen[0].all("X-Request-ID") == [rid]
        assert headers.get_all("X-Request-ID") == [rid]


@pytest.mark.parametrize(
    "rid",
    ["x" * 129, "has space", "semi;colon", "a,b", "tab\there", "q?x", "at@sign", "<script>", "caf\xe9", ""],
)
def test_invalid_client_request_id_replaced(gateway_factory, rid):
    """Forwarding: an X-Request-ID outside 1-128 chars of `A-Za-z0-9._:+=/-` is replaced by a generated one (same both
    ways).
    """
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        resp = exchange(gw.port, http_request("GET", "/api/service1/echo",
                                              [("Host", "h"), ("X-Request-ID", rid), ("Connection", "close")]))
        assert resp.status == 200
        (new,) = be.seen[0].all("X-Request-ID")
        assert new != rid.strip()
        assert REQUEST_ID_RE.match(new), new
        assert resp.all("X-Request-ID") == [new]


# --- X-Forwarded-* trust -------------------------------------------------------


def test_trusted_peer_forwarded_headers_appended_and_kept(gateway_factory):
    """Forwarding: from a peer in GATEWAY_TRUSTED_PROXIES (default: loopback) X-Forwarded-For is appended to,
    Proto/Host kept.
    """
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        exchange(gw.port, http_request("GET", "/api/service1/echo", [
            ("Host", "internal:8080"), ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "public.example"), ("Connection", "close")]))
        exchange(gw.port, http_request("GET", "/api/service1/echo", [
            ("Host", "internal:8080"), ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8, 9.9.9.9"),
            ("Connection", "close")]))
        first, second = be.seen
        assert first.all("X-Forwarded-For") == ["1.2.3.4, 127.0.0.1"]
        assert first.all("X-Forwarded-Proto") == ["https"]
        assert first.all("X-Forwarded-Host") == ["public.example"]
        assert first.all("Host") == ["internal:8080"]
        assert second.all("X-Forwarded-For") == ["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]
        assert second.all("X-Forwarded-Proto") == ["http"]
        assert second.all("X-Forwarded-Host") == ["internal:8080"]


def test_untrusted_peer_cannot_spoof_forwarded_headers(gateway_factory):
    """Forwarding: from a peer not in GATEWAY_TRUSTED_PROXIES the client's X-Forwarded-* are replaced by the gateway's
    own view.
    """
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_TRUSTED_PROXIES="10.0.0.0/8")
        exchange(gw.port, http_request("GET", "/api/service1/echo", [
            ("Host", "internal:8080"), ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Prefix", "/evil"),
            ("x-forwarded-for", "6.6.6.6"), ("Connection", "close")]))
        (seen,) = be.seen
        assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.all("X-Forwarded-Proto") == ["http"]
        assert seen.all("X-Forwarded-Host") == ["internal:8080"]
        assert seen.all("X-Forwarded-Prefix") == ["/api/service1"]


# --- bodies and framing --------------------------------------------------------


def test_head_keeps_content_length_without_body(gateway_factory):
    """Forwarding: HEAD carries no body; the backend's Content-Length is passed unchanged."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with RawClient(gw.port) as c:
            c.send(http_request("HEAD", "/api/service1/bytes/1000", [("Host", "h")])
                   + http_request("GET", "/api/service1/bytes/3", [("Host", "h")]))
            head = c.read_response(head_request=True)
            assert head.status == 200
            assert head.all("Content-Length") == ["1000"]
            assert head.all("Transfer-Encoding") == []
            # had the gateway sent a body, it would be parsed as the next response
            nxt = c.read_response()
            assert nxt.status == 200 and nxt.body == pattern(3)
        assert [s.method for s in be.seen] == ["HEAD", "GET"]


@pytest.mark.parametrize("code", [204, 304])
def test_204_and_304_have_no_body(gateway_factory, code):
    """Forwarding: 204 and 304 carry no body (and are not chunk-framed), the connection stays usable."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with RawClient(gw.port) as c:
            c.send(http_request("GET", f"/api/service1/status/{code}", [("Host", "h")])
                   + http_request("GET", "/api/service1/bytes/5", [("Host", "h"), ("Connection", "close")]))
            resp = c.read_response()
            assert resp.status == code
            assert resp.all("Transfer-Encoding") == []
            assert resp.all("Content-Length") in ([], ["0"])
            rest = c.read_until_closed()
        assert rest.startswith(b"HTTP/1.1 200 "), rest[:100]
        assert rest.endswith(b"\r\n\r\n" + pattern(5))


def test_chunked_request_body_arrives_byte_exact(gateway_factory):
    """Forwarding: a chunked request body (extensions, trailer, split writes) is re-framed and arrives byte-exact."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with RawClient(gw.port) as c:
            c.send(b"POST /api/service1/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
            c.send(b"5;ext=1\r\nhello\r\n")
            time.sleep(0.05)  # behaviour: split writes
            c.send(b"1\r\n \r\nA\r\n0123456789\r\n")
            time.sleep(0.05)  # behaviour: split writes
            c.send(b"3\r\n\x00\r\n\r\n0\r\nX-Trailer: t\r\n\r\n")
            resp = c.read_response()
        assert resp.status == 200
        (seen,) = be.seen
        assert seen.body == b"hello 0123456789\x00\r\n"
        framing = (seen.all("Transfer-Encoding"), seen.all("Content-Length"))
        assert framing in ((["chunked"], []), ([], [str(len(seen.body))])), framing


def test_chunked_upload_with_http_client(gateway_factory):
    """Forwarding: a streamed (chunked) upload of odd-sized pieces arrives whole (sha256 checked by the backend)."""
    pieces = [os.urandom(n) for n in (1, 100, 65536, 3, 300_000, 7, 131_072)]
    data = b"".join(pieces)
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("PUT", "/api/service1/echo", body=iter(pieces), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        conn.close()
        assert resp.status == 200
        assert (doc["body_len"], doc["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("n", [0, 1, 65536, 1_000_003])
def test_chunked_response_arrives_whole(gateway_factory, n):
    """Forwarding: a chunked response body streams down whole and correctly framed."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with RawClient(gw.port) as c:
            c.send(http_request("GET", f"/api/service1/bytes/{n}?chunked=1", [("Host", "h")])
                   + http_request("GET", "/api/service1/bytes/2", [("Host", "h")]))
            resp = c.read_response()
            assert resp.status == 200
            assert resp.body == pattern(n)
            assert c.read_response().body == pattern(2)  # framing intact: the next response parses


def test_large_upload_byte_exact(gateway_factory):
    """Forwarding: bodies stream in both directions whatever their size: an 8 MiB upload arrives byte-exact."""
    data = os.urandom(8 * 1024 * 1024)
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, _, body = request(gw.port, "POST", "/api/service1/echo", body=data, timeout=20)
        assert status == 200
        doc = json.loads(body)
        assert doc["body_len"] == len(data)
        assert doc["sha256"] == hashlib.sha256(data).hexdigest()


def test_large_download_byte_exact(gateway_factory):
    """Forwarding: bodies stream whatever their size: a 32 MiB response arrives complete and unchanged."""
    n = 32 * 1024 * 1024
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, headers, body = request(gw.port, "GET", f"/api/service1/bytes/{n}", timeout=20)
        assert status == 200
        assert headers["Content-Length"] == str(n)
        assert len(body) == n
        assert body == pattern(n)


def test_expect_100_continue_answered_by_gateway(gateway_factory):
    """Forwarding: `Expect: 100-continue` is answered by the gateway (100 before the body is sent), then the body goes
    up.
    """
    body = b'{"order": 1}'
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with RawClient(gw.port, timeout=3) as c:
            c.send(http_request("POST", "/api/service1/orders", [
                ("Host", "h"), ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))), ("Expect", "100-continue")]))
            status_line, _headers = c.read_head()
            assert status_line.startswith(b"HTTP/1.1 100"), status_line
            assert c.buf == b"", "nothing but the 100 may come before the body is sent"
            c.send(body)
            resp = c.read_response()
        assert resp.status == 200
        doc = json.loads(resp.body)
        assert doc["target"] == "/api/orders"
        assert doc["sha256"] == hashlib.sha256(body).hexdigest()
        assert [s.body for s in be.seen] == [body]


def test_expect_100_over_limit_is_413_at_once(gateway_factory):
    """Forwarding/Errors: `Expect: 100-continue` with a declared length over GATEWAY_MAX_BODY_BYTES is 413 at once (no
    100).
    """
    with backend() as be:
        body_timeout_s = 2.0  # "at once": not after waiting for a body
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_BODY_BYTES="1000",
                             GATEWAY_CLIENT_BODY_TIMEOUT=str(body_timeout_s))
        with RawClient(gw.port, timeout=2 * body_timeout_s) as c:
            started = time.monotonic()
            c.send(http_request("POST", "/api/service1/orders", [
                ("Host", "h"), ("Content-Length", "2000"), ("Expect", "100-continue")]))
            resp = c.read_response()
            assert time.monotonic() - started < body_timeout_s / 2
        assert resp.informational == []
        assert resp.status == 413
        doc = error_json(resp.body)
        assert doc["error"] == "payload_too_large" and doc["status"] == 413
        assert resp.all("X-Request-ID") == [doc["request_id"]]
        assert be.seen == []


@contextmanager
def close_delimited_backend(body: bytes) -> Iterator[int]:
    """An HTTP/1.0-style backend: no Content-Length, no chunking, the body ends when it closes."""

    def handle(conn: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 10_000):
            conn.sendall(body[i : i + 10_000])
        conn.close()

    with raw_server(handle) as port:
        yield port


def test_close_delimited_response_is_reframed(gateway_factory):
    """Forwarding: the message is re-framed: a backend body delimited by close reaches an HTTP/1.1 client whole,
    framed so the client connection stays usable.
    """
    body = os.urandom(50_000)
    with close_delimited_backend(body) as port:
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}")
        with RawClient(gw.port) as c:
            c.send(http_request("GET", "/api/service1/blob", [("Host", "h")]))
            resp = c.read_response()
            assert resp.status == 200
            assert resp.body == body
            assert resp.all("Connection") == [] or "close" not in resp.all("Connection")[0].lower()
            c.send(http_request("GET", "/health", [("Host", "h")]))
            assert c.read_response().status == 200


def test_http10_client_gets_chunked_response_reframed(gateway_factory):
    """Forwarding: hop-by-hop `Transfer-Encoding` is dropped and the message re-framed: an HTTP/1.0 client gets a
    chunked backend response unchunked (close-delimited or with Content-Length), whole.
    """
    n = 100_003
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with RawClient(gw.port) as c:
            c.send(f"GET /api/service1/bytes/{n}?chunked=1 HTTP/1.0\r\nHost: h\r\n\r\n".encode())
            status_line, headers = c.read_head()
            body = c.read_until_closed()
        assert status_line.startswith(b"HTTP/1.") and b" 200 " in status_line + b" "
        assert not [v for k, v in headers if k.lower() == "transfer-encoding"]
        assert body == pattern(n)


def test_empty_post_keeps_content_length_zero(gateway_factory):
    """Forwarding: end-to-end headers pass unchanged: a POST with `Content-Length: 0` reaches the backend with it."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        resp = exchange(gw.port, http_request("POST", "/api/service1/echo",
                                              [("Host", "h"), ("Content-Length", "0"), ("Connection", "close")]))
        assert resp.status == 200
        (seen,) = be.seen
        assert (seen.method, seen.body, seen.all("Content-Length")) == ("POST", b"", ["0"])


def test_client_keep_alive_reuses_one_connection(gateway_factory):
    """Forwarding (HTTP/1.1 persistence): several requests go over one client connection."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            ports = set()
            for i, target in enumerate(["/api/service1/echo?i=0", "/api/service1/bytes/10", "/api/service1/status/404",
                                        "/api/nope", "/health", "/api/service1/echo?i=5"]):
                conn.request("POST" if i == 0 else "GET", target, body=b"abc" if i == 0 else None)
                resp = conn.getresponse()
                resp.read()
                assert not resp.will_close, target
                ports.add(conn.sock.getsockname()[1])
            assert len(ports) == 1
            assert gw.call(lambda: len(gw.server.gw.connections)) == 1
        finally:
            conn.close()


def test_upstream_connection_is_pooled_and_reused(gateway_factory):
    """Forwarding: upstream connections are persistent and pooled per backend (one backend connection for many
    requests).
    """
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        for i in range(20):  # each on a new client connection: reuse is the pool's, not the client's
            method = ("GET", "POST", "PUT", "DELETE", "HEAD")[i % 5]
            body = b"b" if method in ("POST", "PUT") else None
            status, _, _ = request(gw.port, method, f"/api/service1/echo?i={i}", body=body)
            assert status == 200
        # also across a chunked response and a backend error status
        assert request(gw.port, "GET", "/api/service1/bytes/70000?chunked=1")[0] == 200
        assert request(gw.port, "GET", "/api/service1/status/500")[0] == 500
        assert len(be.seen) == 22
        assert be.connections == 1
        pool = gw.server.gw.pools["service1"]
        assert wait_for(lambda: gw.call(lambda: (pool.idle, pool.busy)) == (1, 0))


def test_pipelined_requests_answered_in_order(gateway_factory):
    """Forwarding (RFC 9112 9.3.2): pipelined requests on one connection get their responses in request order."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        data = (
            http_request("GET", "/api/service1/slow/0.3", [("Host", "h")])
            + http_request("POST", "/api/service1/echo?second", [("Host", "h")], b"two")
            + http_request("GET", "/api/service1/status/404", [("Host", "h"), ("Connection", "close")])
        )
        with RawClient(gw.port) as c:
            c.send(data)
            out = c.read_until_closed(timeout=5)
        responses = split_responses(out)
        assert [r[0] for r in responses] == [200, 200, 404]
        assert json.loads(responses[0][2]) == {"slow": True}
        assert json.loads(responses[1][2])["target"] == "/api/echo?second"
        assert json.loads(responses[1][2])["sha256"] == hashlib.sha256(b"two").hexdigest()
        assert json.loads(responses[2][2]) == {"status": 404, "from": "backend"}
        ids = [r[1]["x-request-id"] for r in responses]
        assert len(set(ids)) == 3


def test_100_concurrent_requests_each_get_their_own_response(gateway_factory):
    """Forwarding under concurrency: 100 concurrent requests, each tagged, each answered with its own response."""
    n = 100
    with backend() as be:
        be.server.socket.listen(512)  # the stdlib default backlog of 5 would only add SYN retries
        upstream_timeout_s = 5.0
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_UPSTREAM_TIMEOUT=str(upstream_timeout_s))
        barrier = threading.Barrier(n)

        def one(i: int) -> tuple[int, int, Any, str]:
            barrier.wait(5)
            status, headers, body = request(gw.port, "POST", f"/api/service1/echo?i={i}",
                                            body=f"body-{i}".encode(), headers={"X-Tag": f"tag-{i}"})
            return i, status, json.loads(body), headers["X-Request-ID"]

        started = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(n)))
        elapsed = time.monotonic() - started
        for i, status, doc, rid in results:
            assert status == 200, (i, status, doc)
            assert doc["target"] == f"/api/echo?i={i}"
            headers = dict((k.lower(), v) for k, v in doc["headers"])
            assert headers["x-tag"] == f"tag-{i}"
            assert headers["x-request-id"] == rid
            assert doc["sha256"] == hashlib.sha256(f"body-{i}".encode()).hexdigest()
        assert len({r[3] for r in results}) == n
        assert len(be.seen) == n
        assert elapsed < upstream_timeout_s, f"100 concurrent requests took {elapsed:.1f}s"
        assert wait_for(lambda: len(gw.log.access()) == n)


# --- access log --------------------------------------------------------------------

LOG_KEYS = {"ts", "request_id", "client", "method", "path", "service", "upstream", "status", "bytes_in",
            "bytes_out", "duration_ms", "upstream_ms", "error"}


def test_access_log_one_line_per_request_with_contract_keys(gateway_factory):
    """Logs: one JSON line per request with ts, request_id, client, method, path, service, upstream, status, bytes_in,
    bytes_out, duration_ms, upstream_ms, error.
    """
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        s1, h1, b1 = request(gw.port, "POST", "/api/service1/echo?q=1", body=b"hello",
                             headers={"X-Request-ID": "log-1"})
        s2, h2, b2 = request(gw.port, "GET", "/api/service9/x")
        s3, h3, b3 = request(gw.port, "GET", "/health")
        s4, h4, b4 = request(gw.port, "GET", "/api/service1/status/503")
        assert (s1, s2, s3, s4) == (200, 404, 200, 503)
        assert wait_for(lambda: len(gw.log.access()) >= 4)
        # No extra line may follow: a sentinel request, answered after the four, must be the
        # fifth and last line once its own line is written.
        assert request(gw.port, "GET", "/health", headers={"X-Request-ID": "sentinel"})[0] == 200
        assert wait_for(lambda: any(r["request_id"] == "sentinel" for r in gw.log.access()))
        *lines, sentinel = gw.log.access()
        assert sentinel["request_id"] == "sentinel", sentinel
        assert len(lines) == 4, lines
        for line in lines:
            assert LOG_KEYS <= set(line), LOG_KEYS - set(line)
            ts = datetime.fromisoformat(line["ts"])
            assert ts.tzinfo is not None and abs(ts.timestamp() - time.time()) < 60
            assert line["client"] == "127.0.0.1"
            assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
        by_id = {r["request_id"]: r for r in lines}
        fwd, nf, health, err = (by_id[h["X-Request-ID"]] for h in (h1, h2, h3, h4))

        assert fwd["request_id"] == "log-1"
        assert fwd["method"] == "POST"
        assert fwd["path"] in ("/api/service1/echo?q=1", "/api/service1/echo")
        assert fwd["service"] == "service1"
        assert fwd["upstream"].startswith(be.url)
        assert fwd["status"] == 200 and fwd["error"] is None
        assert fwd["bytes_in"] == 5 and fwd["bytes_out"] == len(b1)
        assert isinstance(fwd["upstream_ms"], int | float)
        assert 0 <= fwd["upstream_ms"] <= fwd["duration_ms"]

        assert nf["method"] == "GET" and nf["path"].startswith("/api/service9/x")
        assert nf["service"] is None and nf["upstream"] is None and nf["upstream_ms"] is None
        assert nf["status"] == 404 and nf["error"] == "not_found"
        assert nf["bytes_in"] == 0 and nf["bytes_out"] == len(b2)

        assert health["path"] == "/health" and health["status"] == 200
        assert health["service"] is None and health["upstream"] is None and health["upstream_ms"] is None
        assert health["error"] is None and health["bytes_out"] == len(b3)

        # a backend's own 503 is passed through: the gateway made no error of its own
        assert err["service"] == "service1" and err["status"] == 503 and err["error"] is None
        assert err["bytes_out"] == len(b4) and isinstance(err["upstream_ms"], int | float)
