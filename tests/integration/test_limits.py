"""Client-side limits and malformed requests over real loopback sockets.

Raw sockets send exactly the bytes under test (http.client would refuse or
fix most of them). Where the gateway answers itself, the status and the
contract's JSON body are both checked; for malformed requests, so is that
nothing reached the backend and that the connection is closed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Any

import pytest

from tests.backends import backend
from tests.integration.helpers import (
    error_json,
    read_response,
    read_until_closed,
    request,
    sentinel_request,
    split_responses,
)

LIMIT = 1000


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def assert_error_response(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> dict[str, Any]:
    assert status == expected, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = error_json(body)
    assert doc["error"] == code and doc["status"] == expected, doc
    assert doc["request_id"] and headers.get("x-request-id") == doc["request_id"], (doc, headers)
    return doc


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# --- body size -----------------------------------------------------------------------
def test_content_length_over_limit_is_413_before_backend(gateway_factory):
    """Errors: body over GATEWAY_MAX_BODY_BYTES by Content-Length -> 413 payload_too_large,
    answered from the head alone: the backend is never contacted."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_BODY_BYTES=str(LIMIT))
        with connect(gw.port) as s:
            # Only the head: the 413 must not wait for a body that is over the limit anyway.
            s.sendall(b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
            assert_error_response(*read_response(s, 2), 413, "payload_too_large")
        status, headers, body = request(gw.port, "POST", "/api/service1/echo", body=b"b" * (LIMIT + 1))
        assert_error_response(status, {k.lower(): v for k, v in headers.items()}, body, 413, "payload_too_large")
        # the gateway holds no backend connection, and a sentinel is the backend's first request
        assert gw.call(lambda: gw.server.gw.pools["service1"].idle + gw.server.gw.pools["service1"].busy) == 0
        sentinel_request(gw.port)
        assert [seen.target for seen in be.seen] == ["/api/sentinel"] and be.connections == 1


def test_expect_100_continue_over_limit_is_413_at_once(gateway_factory):
    """Forwarding: `Expect: 100-continue` is answered by the gateway, 413 at once when the
    declared length is over the limit (no 100 Continue first)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_BODY_BYTES=str(LIMIT))
        with connect(gw.port) as s:
            s.sendall(
                b"PUT /api/service1/echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % (LIMIT * 5)
            )
            assert_error_response(*read_response(s, 2), 413, "payload_too_large")
        assert be.seen == [] and be.connections == 0


def test_chunked_body_over_limit_is_413_counted_while_streaming(gateway_factory):
    """Errors: body over GATEWAY_MAX_BODY_BYTES counted while streaming (chunked, no
    Content-Length) -> 413 payload_too_large; the backend never gets a complete request."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_BODY_BYTES=str(LIMIT))
        with connect(gw.port) as s:
            s.sendall(b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            s.sendall(b"%x\r\n%s\r\n" % (600, b"a" * 600))
            time.sleep(0.05)  # behaviour: the body streams in separate writes
            s.sendall(b"%x\r\n%s\r\n" % (600, b"b" * 600))
            time.sleep(0.05)  # behaviour: the body streams in separate writes
            try:
                s.sendall(chunked(b"c" * 600))
            except OSError:
                pass  # the gateway may already have answered and closed
            assert_error_response(*read_response(s, 2), 413, "payload_too_large")
        sentinel_request(gw.port)  # no recovery after the 413 would fail here
        assert [seen.target for seen in be.seen] == ["/api/sentinel"], "the over-limit body reached the backend"


def test_body_exactly_at_limit_passes(gateway_factory):
    """Configuration: GATEWAY_MAX_BODY_BYTES is the largest body accepted: exactly that many
    bytes pass, by Content-Length and chunked."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_BODY_BYTES=str(LIMIT))
        status, _, body = request(gw.port, "POST", "/api/service1/echo", body=b"x" * LIMIT)
        assert status == 200 and json.loads(body)["body_len"] == LIMIT
        with connect(gw.port) as s:
            s.sendall(
                b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunked(b"y" * 400, b"z" * (LIMIT - 400))
            )
            status2, _, body2 = read_response(s, 3)
        assert status2 == 200 and json.loads(body2)["body_len"] == LIMIT
        assert [len(seen.body) for seen in be.seen] == [LIMIT, LIMIT]


def test_max_body_bytes_zero_means_no_limit(gateway_factory):
    """Configuration: GATEWAY_MAX_BODY_BYTES=0 means no limit (a body over the 10 MiB default passes)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_BODY_BYTES="0")
        payload = b"0123456789abcdef" * (10 * 1024 * 1024 // 16 + 64)  # 10 MiB + 1 KiB
        status, _, body = request(gw.port, "POST", "/api/service1/echo", body=payload, timeout=20)
        assert status == 200, body[:300]
        doc = json.loads(body)
        assert doc["body_len"] == len(payload)
        assert doc["sha256"] == hashlib.sha256(payload).hexdigest()


# --- request head ------------------------------------------------------------------
def test_head_over_max_header_bytes_is_431(gateway_factory):
    """Errors: request head over GATEWAY_MAX_HEADER_BYTES -> 431
    request_header_fields_too_large, then close; the backend sees nothing."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_HEADER_BYTES="4096")
        with connect(gw.port) as s:
            s.sendall(b"GET /api/service1/echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
            data, closed = read_until_closed(s, 3)
        assert data, "no answer to an 8 KiB head"
        [(status, headers, body)] = split_responses(data)
        assert_error_response(status, headers, body, 431, "request_header_fields_too_large")
        assert closed
        assert be.seen == []


def test_head_over_max_header_bytes_in_pieces_is_431(gateway_factory):
    """Errors: the 431 limit holds however the head is split into writes."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_HEADER_BYTES="4096")
        with connect(gw.port) as s:
            s.sendall(b"GET /api/service1/echo HTTP/1.1\r\nHost: t\r\n")
            try:
                for i in range(8):
                    s.sendall(b"X-H%d: %s\r\n" % (i, b"a" * 1000))
                    time.sleep(0.01)  # behaviour: the head arrives in separate writes
                s.sendall(b"\r\n")
            except OSError:
                pass  # closed after the 431, as it should be
            data, closed = read_until_closed(s, 3)
        [(status, headers, body)] = split_responses(data)
        assert_error_response(status, headers, body, 431, "request_header_fields_too_large")
        assert closed
        assert be.seen == []


def test_head_under_max_header_bytes_passes(gateway_factory):
    """Configuration: a head within GATEWAY_MAX_HEADER_BYTES is forwarded."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_MAX_HEADER_BYTES="4096")
        status, _, _ = request(gw.port, "GET", "/api/service1/echo", headers={"X-Big": "a" * 3000})
        assert status == 200
        assert be.seen[0].header("X-Big") == "a" * 3000


def test_partial_head_past_header_timeout_is_408_then_close(gateway_factory):
    """Errors: client too slow to send its request head -> 408 request_timeout, then close
    (GATEWAY_CLIENT_HEADER_TIMEOUT)."""
    with backend() as be:
        header_timeout_s = 0.5
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_CLIENT_HEADER_TIMEOUT=str(header_timeout_s))
        with connect(gw.port) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /api/service1/echo HTTP/1.1\r\nHost: t\r\n")  # no blank line: stalls
            data, closed = read_until_closed(s, 6 * header_timeout_s)
            elapsed = time.monotonic() - t0
        [(status, headers, body)] = split_responses(data)
        assert_error_response(status, headers, body, 408, "request_timeout")
        assert closed
        assert 0.8 * header_timeout_s <= elapsed < 3 * header_timeout_s, elapsed
        assert be.seen == []


def test_silent_connection_closed_after_header_timeout(gateway_factory):
    """Configuration: GATEWAY_CLIENT_HEADER_TIMEOUT bounds a connection that sends nothing:
    it is closed (at most with a 408, never held open)."""
    header_timeout_s = 0.5
    gw = gateway_factory(GATEWAY_CLIENT_HEADER_TIMEOUT=str(header_timeout_s))
    with connect(gw.port) as s:
        t0 = time.monotonic()
        data, closed = read_until_closed(s, 6 * header_timeout_s)
        elapsed = time.monotonic() - t0
    assert closed, "a silent connection was held open past the header timeout"
    assert 0.8 * header_timeout_s <= elapsed < 3 * header_timeout_s, elapsed
    if data:
        [(status, headers, body)] = split_responses(data)
        assert_error_response(status, headers, body, 408, "request_timeout")


def test_idle_keepalive_connection_closed_after_keepalive_timeout(gateway_factory):
    """Configuration: GATEWAY_KEEPALIVE_TIMEOUT is how long an idle client connection is kept."""
    keepalive_timeout_s = 0.5
    gw = gateway_factory(GATEWAY_KEEPALIVE_TIMEOUT=str(keepalive_timeout_s))
    with connect(gw.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = read_response(s, 2)
        assert status == 200 and headers.get("connection", "").lower() != "close"
        t0 = time.monotonic()
        data, closed = read_until_closed(s, 6 * keepalive_timeout_s)
        elapsed = time.monotonic() - t0
    assert closed and data == b"", data
    assert 0.8 * keepalive_timeout_s <= elapsed < 3 * keepalive_timeout_s, elapsed


# --- malformed requests -------------------------------------------------------------
MALFORMED = {
    "garbage_request_line": b"HELLO THERE\r\n\r\n",
    "both_content_length_and_transfer_encoding": (
        b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"hello")
    ),
    "conflicting_content_length": (
        b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "transfer_encoding_gzip_chunked": (
        b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + chunked(b"hello")
    ),
    "bad_chunk_size": (
        b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    ),
    "absolute_form_target": b"GET http://x/api/service1/echo HTTP/1.1\r\nHost: x\r\n\r\n",
}


FOLLOW_UP = b"GET /api/service1/after HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize("raw_request", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_is_400_then_close(gateway_factory, raw_request):
    """Errors: malformed request -> 400 bad_request (JSON); nothing reaches the backend, not
    even a request pipelined behind it, and the connection is closed after the 400 (nginx
    drops keep-alive on 400: once the framing is in doubt, so is every later byte)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with connect(gw.port) as s:
            s.sendall(raw_request + FOLLOW_UP)
            data, closed = read_until_closed(s, 3)
        assert data, "no answer"
        responses = split_responses(data)
        status, headers, body = responses[0]
        assert_error_response(status, headers, body, 400, "bad_request")
        held = gw.call(lambda: gw.server.gw.pools["service1"].idle + gw.server.gw.pools["service1"].busy)
        sentinel_request(gw.port)
        assert [(seen.method, seen.target) for seen in be.seen] == [("GET", "/api/sentinel")]
        if b"Content-Length: 5\r\nTransfer-Encoding" in raw_request:
            assert held == 0 and be.connections == 1, "a request with ambiguous framing was sent upstream"
        assert len(responses) == 1, [r[0] for r in responses]
        assert closed, "connection kept open after a 400"


def test_ambiguous_framing_cannot_smuggle_a_request(gateway_factory):
    """Errors + RFC 9112 6.3: a request with both Content-Length and Transfer-Encoding is a
    400, and the bytes after its head are never parsed as a new request (request smuggling:
    read as chunked, the body below ends at once and a second request follows)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with connect(gw.port) as s:
            s.sendall(
                b"POST /api/service1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /api/service1/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            data, closed = read_until_closed(s, 2)
        status, headers, body = split_responses(data)[0]
        assert_error_response(status, headers, body, 400, "bad_request")
        sentinel_request(gw.port)
        assert [seen.target for seen in be.seen] == ["/api/sentinel"], "a request hidden in the body was forwarded"
        assert closed


def test_obs_fold_is_rejected_or_unfolded(gateway_factory):
    """RFC 9112 5.2: a recipient of obs-fold in a request MUST either reject it with 400 or
    replace each obs-fold with SP before forwarding; it never passes the fold through."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with connect(gw.port) as s:
            s.sendall(b"GET /api/service1/echo HTTP/1.1\r\nHost: t\r\nX-Fold: a\r\n  b\r\n\r\n")
            status, headers, body = read_response(s, 3)
            if status == 400:
                assert_error_response(status, headers, body, 400, "bad_request")
                _, closed = read_until_closed(s, 3)
                assert closed, "connection kept open after a 400"
                assert be.seen == []
                return
        assert status == 200, (status, body)
        [seen] = be.seen
        value = seen.header("X-Fold")
        assert value is not None and "\r" not in value and "\n" not in value, value
        assert value.split() == ["a", "b"], value
        assert seen.header(" b") is None and not any(k.strip() == "b" for k, _ in seen.headers)


def test_http_version_other_than_1_is_505_then_close(gateway_factory):
    """Choices where the contract is silent (nginx): a request line of another HTTP major
    version gets 505 http_version_not_supported and a close; nothing reaches the backend."""
    from tests.integration.helpers import raw

    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        for version in (b"HTTP/2.0", b"HTTP/3.1"):
            data = raw(gw.port, b"GET /api/service1/x " + version + b"\r\nHost: a\r\n\r\nGET /api/service1/y HTTP/1.1\r\nHost: a\r\n\r\n")
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 505 ")
            assert b"connection: close" in head.lower()
            assert error_json(body)["error"] == "http_version_not_supported"
        assert be.seen == []
