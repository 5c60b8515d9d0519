"""Backend failures over real loopback sockets: what the client sees, and what is left behind.

Every backend here is a real server (stdlib HTTP, or a raw socket that
misbehaves on purpose); nothing is mocked. Each failure test also checks that
the upstream pool is not left holding a busy connection.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest

from tests.backends import backend, blackhole, close_at_once, free_port, garbage, hang, raw_server
from tests.integration.helpers import error_json, get_json, read_until_closed, request, wait_for


# --- helpers -----------------------------------------------------------------
def assert_error(
    result: tuple[int, http.client.HTTPMessage, bytes], status: int, code: str
) -> dict[str, Any]:
    """The gateway's own answer: the status, and the contract's JSON body with a matching request id."""
    got, headers, body = result
    assert got == status, (got, body)
    assert (headers.get("Content-Type") or "").startswith("application/json"), headers
    doc = error_json(body)
    assert doc["error"] == code, doc
    assert doc["status"] == status, doc
    assert doc["request_id"] and headers.get("X-Request-ID") == doc["request_id"], (doc, headers)
    return doc


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def pool_busy(gw: Any, name: str = "service1") -> int:
    return int(gw.call(lambda: gw.server.gw.pools[name].busy))


def wait_pool_settled(gw: Any, name: str = "service1", timeout_s: float = 2.0) -> None:
    """No upstream connection of ``name`` is left busy once the failure is answered."""
    assert wait_for(lambda: pool_busy(gw, name) == 0, timeout_s), f"pool {name} still has busy connection(s)"


def wait_pool_busy(gw: Any, n: int, timeout_s: float = 2.0) -> None:
    assert wait_for(lambda: pool_busy(gw) >= n, timeout_s), "the request never reached the upstream pool"


def wait_access_line(gw: Any, request_id: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """The access-log line of one request (written just after the response)."""
    lines = wait_for(lambda: [r for r in gw.log.access() if r["request_id"] == request_id], timeout_s)
    assert lines, f"no access-log line for {request_id}"
    [line] = lines
    found: dict[str, Any] = line
    return found


@contextmanager
def in_thread(fn: Callable[[], Any]) -> Iterator[list[Any]]:
    """Run ``fn`` in a thread for the block; yields a list that holds its result (or exception) after."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        thread.join(10)
        assert not thread.is_alive(), "background request did not finish"


def services_state(gw: Any, name: str = "service1") -> dict[str, Any]:
    status, doc = get_json(gw.port, "/api/gateway/services")
    assert status == 200
    [svc] = [s for s in doc["services"] if s["name"] == name]
    return svc["state"]


def rfc3339(ts: str) -> datetime:
    parsed = datetime.fromisoformat(ts)
    assert parsed.tzinfo is not None, ts
    return parsed


def _read_head(conn: socket.socket, buf: bytearray) -> bytes | None:
    """One request head from ``conn`` (the rest stays in ``buf``); None at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    return head


def answers_first_then_closes(log: list[tuple[int, bytes]]) -> Callable[[socket.socket], None]:
    """A keep-alive backend that answers the first request on each connection and then,
    on the next request, closes without a byte of answer: the close races the reuse."""
    counter = iter(range(1_000_000))

    def handler(conn: socket.socket) -> None:
        conn_id = next(counter)
        buf = bytearray()
        with conn:
            head = _read_head(conn, buf)
            if head is None:
                return
            log.append((conn_id, head.split(b"\r\n", 1)[0]))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            head = _read_head(conn, buf)
            if head is None:
                return
            log.append((conn_id, head.split(b"\r\n", 1)[0]))
            # close without answering

    return handler


# --- connect failures ----------------------------------------------------------
def test_refused_backend_is_502_fast(gateway_factory):
    """Errors: backend refused -> 502 bad_gateway (refused is immediate: well within the connect timeout)."""
    connect_timeout_s = 2.0
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}", GATEWAY_CONNECT_TIMEOUT=str(connect_timeout_s))
    result, elapsed = timed(lambda: request(gw.port, "GET", "/api/service1/orders"))
    doc = assert_error(result, 502, "bad_gateway")
    assert elapsed < connect_timeout_s, elapsed  # answered at the refusal, not at the timeout
    line = wait_access_line(gw, doc["request_id"])
    assert line["status"] == 502 and line["error"] == "bad_gateway"
    wait_pool_settled(gw)


def test_unresolvable_host_is_502(gateway_factory):
    """Errors: backend unresolvable -> 502 bad_gateway."""
    connect_timeout_s = 5.0
    gw = gateway_factory(SERVICE1_URL="http://nonexistent.invalid:8000", GATEWAY_CONNECT_TIMEOUT=str(connect_timeout_s))
    result, elapsed = timed(lambda: request(gw.port, "GET", "/api/service1/orders"))
    assert_error(result, 502, "bad_gateway")
    assert elapsed < 2 * connect_timeout_s, elapsed
    wait_pool_settled(gw)


def test_connect_timeout_is_504(gateway_factory):
    """Errors: connect timeout -> 504 gateway_timeout, after GATEWAY_CONNECT_TIMEOUT (not the default 5 s)."""
    with blackhole() as port:
        connect_timeout_s = 0.3
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_CONNECT_TIMEOUT=str(connect_timeout_s))
        result, elapsed = timed(lambda: request(gw.port, "GET", "/api/service1/orders"))
        assert_error(result, 504, "gateway_timeout")
        # the configured timeout, not the 5 s default (5 * 0.3 s stays below it)
        assert 0.8 * connect_timeout_s <= elapsed < 5 * connect_timeout_s, elapsed
        wait_pool_settled(gw)


# --- response failures -----------------------------------------------------------
def test_hanging_backend_is_504_after_upstream_timeout(gateway_factory):
    """Errors: response timeout -> 504 gateway_timeout within GATEWAY_UPSTREAM_TIMEOUT + 1 s."""
    with raw_server(hang) as port:
        upstream_timeout_s = 0.5
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_UPSTREAM_TIMEOUT=str(upstream_timeout_s))
        result, elapsed = timed(lambda: request(gw.port, "GET", "/api/service1/orders"))
        assert_error(result, 504, "gateway_timeout")
        assert 0.9 * upstream_timeout_s <= elapsed < 3 * upstream_timeout_s, elapsed
        wait_pool_settled(gw)


def test_garbage_response_is_502(gateway_factory):
    """Errors: backend sent an invalid response -> 502 bad_gateway."""
    with raw_server(garbage) as port:
        upstream_timeout_s = 2.0
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_UPSTREAM_TIMEOUT=str(upstream_timeout_s))
        result, elapsed = timed(lambda: request(gw.port, "GET", "/api/service1/orders"))
        assert_error(result, 502, "bad_gateway")
        assert elapsed < upstream_timeout_s, elapsed  # answered at the garbage, not at a timeout
        wait_pool_settled(gw)


def test_backend_closing_without_answer_is_502(gateway_factory):
    """Errors: backend closed the connection before any response (fresh connection) -> 502 bad_gateway."""
    with raw_server(close_at_once) as port:
        upstream_timeout_s = 2.0
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_UPSTREAM_TIMEOUT=str(upstream_timeout_s))
        result, elapsed = timed(lambda: request(gw.port, "GET", "/api/service1/orders"))
        assert_error(result, 502, "bad_gateway")
        assert elapsed < upstream_timeout_s, elapsed  # answered at the close, not at a timeout
        wait_pool_settled(gw)


def test_backend_closing_during_large_upload_is_502(gateway_factory):
    """Errors: backend reset while the request body streams up -> 502 bad_gateway, not a dropped client."""
    with raw_server(close_at_once) as port:
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}")
        try:
            result = request(gw.port, "POST", "/api/service1/upload", body=b"u" * (4 * 1024 * 1024))
        except ConnectionError as exc:
            pytest.fail(f"the gateway dropped the client instead of answering 502: {exc!r}")
        doc = assert_error(result, 502, "bad_gateway")
        line = wait_access_line(gw, doc["request_id"])
        assert line["error"] == "bad_gateway", line
        wait_pool_settled(gw)


def test_backend_dying_mid_response_truncates_and_closes(gateway_factory):
    """Forwarding/Style 10: after the first byte, an upstream failure closes the client
    connection, so a truncated body never looks complete; the next request works."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            conn.request("GET", "/api/service1/die/50000")
            with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
                resp = conn.getresponse()
                resp.read()  # declares 100000 bytes; must not end "cleanly" with fewer
        finally:
            conn.close()
        status, doc = get_json(gw.port, "/api/service1/echo")
        assert status == 200 and doc["target"] == "/api/echo"
        wait_pool_settled(gw)


def test_backend_dying_mid_response_raw(gateway_factory):
    """Forwarding: the client gets the 200 head, fewer bytes than declared, then the connection ends."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /api/service1/die/50000 HTTP/1.1\r\nHost: t\r\n\r\n")
            data, closed = read_until_closed(s, 3)
        assert closed, "the client connection stayed open after a truncated response"
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), data[:200]
        assert b"content-length: 100000" in head.lower(), head
        assert len(body) < 100000
        wait_pool_settled(gw)
        assert request(gw.port, "GET", "/api/service1/echo")[0] == 200


# --- pooled connections the backend closed -----------------------------------------
def test_backend_idle_close_before_pool_expiry_never_502(gateway_factory):
    """Forwarding: a pooled connection the backend closed while idle never surfaces as an error
    (the pool's expiry is 30 s here, so only close detection or a retry can save it)."""
    with backend(idle_close_s=0.3) as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_POOL_IDLE_TIMEOUT="30")
        assert request(gw.port, "GET", "/api/service1/echo")[0] == 200
        assert wait_for(lambda: be.closed >= 1), "the backend never closed its idle connection"
        statuses = [request(gw.port, "GET", "/api/service1/echo")[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert be.connections >= 2, "the scenario did not happen: the backend never closed"
        wait_pool_settled(gw)


def test_pool_expires_idle_before_backend_keepalive(gateway_factory):
    """Forwarding: the pool expires idle connections before the usual backend keep-alive
    (uvicorn: 5 s), with the default GATEWAY_POOL_IDLE_TIMEOUT. Slow by nature (~4.5 s)."""
    with backend(idle_close_s=5.0) as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        pool_idle_timeout_s = gw.call(lambda: gw.server.gw.pools["service1"].idle_timeout_s)
        assert 0 < pool_idle_timeout_s < 5.0
        assert request(gw.port, "GET", "/api/service1/echo")[0] == 200
        assert gw.call(lambda: gw.server.gw.pools["service1"].idle) == 1
        # behaviour: the connection stays idle past the pool's expiry, before the backend's 5 s
        time.sleep(pool_idle_timeout_s + 0.3)
        assert request(gw.port, "GET", "/api/service1/echo")[0] == 200
        # The backend had not closed yet: only the pool's own expiry explains a new connection.
        assert be.connections == 2
        wait_pool_settled(gw)


def test_reused_connection_closed_on_request_is_retried_for_get(gateway_factory):
    """Forwarding: when the close races the request, an idempotent request with no body goes
    out again, once, on a fresh connection: the client sees 200, not 502."""
    log: list[tuple[int, bytes]] = []
    with raw_server(answers_first_then_closes(log)) as port:
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_POOL_IDLE_TIMEOUT="30")
        first = request(gw.port, "GET", "/api/service1/a")
        assert first[0] == 200 and first[2] == b"ok"
        second = request(gw.port, "GET", "/api/service1/b")
        assert second[0] == 200 and second[2] == b"ok"
        assert log == [(0, b"GET /api/a HTTP/1.1"), (0, b"GET /api/b HTTP/1.1"), (1, b"GET /api/b HTTP/1.1")]
        wait_pool_settled(gw)


def test_reused_connection_closed_on_post_is_not_resent(gateway_factory):
    """Forwarding: a request that may have reached the backend is never sent twice otherwise:
    a POST whose reused connection closes unanswered is 502, sent once."""
    log: list[tuple[int, bytes]] = []
    with raw_server(answers_first_then_closes(log)) as port:
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_POOL_IDLE_TIMEOUT="30")
        assert request(gw.port, "GET", "/api/service1/a")[0] == 200
        result = request(gw.port, "POST", "/api/service1/pay", body=b'{"amount": 1}')
        assert_error(result, 502, "bad_gateway")
        # A sentinel ordered after any (wrong) resend: the next request to the same backend.
        # A resend goes out before the 502 is answered, so it would have arrived first.
        assert request(gw.port, "GET", "/api/service1/after")[0] == 200
        assert wait_for(lambda: b"GET /api/after HTTP/1.1" in [line for _, line in log]), log
        lines = [line for _, line in log]
        assert lines.count(b"POST /api/pay HTTP/1.1") == 1, log
        assert lines.index(b"POST /api/pay HTTP/1.1") < lines.index(b"GET /api/after HTTP/1.1"), log
        wait_pool_settled(gw)


# --- pool saturation ---------------------------------------------------------------
def test_saturated_pool_is_503_after_pool_timeout(gateway_factory):
    """Errors: backend pool saturated -> 503 service_unavailable after GATEWAY_POOL_TIMEOUT;
    the request in flight is unaffected."""
    with backend() as be:
        pool_timeout_s = 0.3
        gw = gateway_factory(
            SERVICE1_URL=be.url, GATEWAY_POOL_MAX_CONNECTIONS="1", GATEWAY_POOL_TIMEOUT=str(pool_timeout_s)
        )
        # the backend's delay is the scenario: it holds the only connection past the pool timeout
        with in_thread(lambda: request(gw.port, "GET", f"/api/service1/slow/{5 * pool_timeout_s}")) as slow:
            wait_pool_busy(gw, 1)
            result, elapsed = timed(lambda: request(gw.port, "GET", "/api/service1/echo"))
            assert_error(result, 503, "service_unavailable")
            assert 0.8 * pool_timeout_s <= elapsed < 4 * pool_timeout_s, elapsed
        assert not isinstance(slow[0], BaseException), slow
        assert slow[0][0] == 200
        wait_pool_settled(gw)
        assert request(gw.port, "GET", "/api/service1/echo")[0] == 200


# --- health and service state ---------------------------------------------------------
def test_health_stays_200_while_backend_hangs(gateway_factory):
    """Health: GET /health is 200 when serving; it never probes (or waits on) backends."""
    with raw_server(hang) as port:
        upstream_timeout_s = 2.0
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}", GATEWAY_UPSTREAM_TIMEOUT=str(upstream_timeout_s))
        with in_thread(lambda: request(gw.port, "GET", "/api/service1/orders")) as hung:
            wait_pool_busy(gw, 1)
            (status, doc), elapsed = timed(lambda: get_json(gw.port, "/health"))
            assert status == 200 and doc["status"] == "ok"
            assert elapsed < upstream_timeout_s / 2, elapsed
            # ordered, not timed: /health answered while the backend request still hangs
            assert not hung and pool_busy(gw) == 1
        assert_error(hung[0], 504, "gateway_timeout")
        wait_pool_settled(gw)


def test_health_stays_200_while_backend_is_down(gateway_factory):
    """Health: /health is 200 while serving, whatever the backends' state (it never probes them)."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    assert_error(request(gw.port, "GET", "/api/service1/orders"), 502, "bad_gateway")
    status, doc = get_json(gw.port, "/health")
    assert status == 200 and doc["status"] == "ok"
    wait_pool_settled(gw)


def test_services_state_records_failures(gateway_factory):
    """Routing: /api/gateway/services state is built from real traffic: last_error
    {ts, error, status} and consecutive_failures after backend failures."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    state = services_state(gw)
    assert state["last_error"] is None and state["last_success"] is None
    assert state["consecutive_failures"] == 0
    for _ in range(2):
        assert_error(request(gw.port, "GET", "/api/service1/orders"), 502, "bad_gateway")
    state = services_state(gw)
    assert state["consecutive_failures"] == 2
    err = state["last_error"]
    assert err["error"] == "bad_gateway" and err["status"] == 502
    rfc3339(err["ts"])
    assert state["last_success"] is None
    assert state["pool"] == {"idle": 0, "busy": 0}


def test_services_state_resets_after_success(gateway_factory):
    """Routing: consecutive_failures counts 504s from timeouts and returns to 0 on a success,
    which sets last_success."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url, GATEWAY_UPSTREAM_TIMEOUT="0.3")
        for _ in range(2):
            assert_error(request(gw.port, "GET", "/api/service1/slow/1"), 504, "gateway_timeout")
        state = services_state(gw)
        assert state["consecutive_failures"] == 2
        assert state["last_error"]["error"] == "gateway_timeout" and state["last_error"]["status"] == 504
        assert request(gw.port, "GET", "/api/service1/echo")[0] == 200
        state = services_state(gw)
        assert state["consecutive_failures"] == 0
        assert state["last_success"] is not None
        rfc3339(state["last_success"])
        wait_pool_settled(gw)


def _bad_chunk(conn):
    """A 200 head, then a chunk size that is not hex, in the same write."""
    from tests.backends import _read_head

    _read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    time.sleep(0.5)  # behaviour: stay open, so the gateway judges the bad chunk, not an EOF
    conn.close()


def test_broken_body_before_anything_was_sent_is_502(gateway_factory):
    """Errors: a backend whose response turns out invalid before the gateway wrote a
    byte of it gives the client a clean 502 bad_gateway, not a cut-off response."""
    with raw_server(_bad_chunk) as port:
        gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{port}")
        status, _, body = request(gw.port, "GET", "/api/service1/x")
        assert status == 502 and error_json(body)["error"] == "bad_gateway"
