"""h11fast writes what h11's send() writes and leaves h11 in the same states."""

from __future__ import annotations

import h11
import pytest

from gateway import h11fast

REQUEST_HEADERS = [
    (b"User-Agent", b"t"),
    (b"host", b"backend:80"),
    (b"X-Forwarded-For", b"127.0.0.1"),
    (b"Accept", b"*/*"),
]


def _states(conn: h11.Connection) -> tuple[object, ...]:
    return (conn.our_state, conn.their_state, conn._cstate.keep_alive, type(conn._writer), type(conn._reader))


def test_pinned_version() -> None:
    # h11fast relies on h11 internals as of this version: re-check them before moving the pin.
    assert h11.__version__ == h11fast.H11_VERSION


@pytest.mark.parametrize(
    ("end", "extra"),
    [
        (True, []),
        (True, [(b"Connection", b"close")]),
        (False, [(b"Content-Length", b"5")]),
        (False, [(b"Transfer-Encoding", b"chunked")]),
        (False, [(b"Connection", b"close"), (b"Content-Length", b"5")]),
    ],
)
def test_request_head_matches_send(end: bool, extra: list[tuple[bytes, bytes]]) -> None:
    ref, fast = h11.Connection(h11.CLIENT), h11.Connection(h11.CLIENT)
    request = h11.Request(method=b"GET", target=b"/a?b", headers=REQUEST_HEADERS + extra)
    expected = ref.send(request)
    if end:
        expected += ref.send(h11.EndOfMessage())
    assert h11fast.request_head(fast, request, end=end) == expected
    assert _states(fast) == _states(ref)


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, [(b"Content-Length", b"3"), (b"X-A", b"b")]),
        (204, [(b"Content-Length", b"0")]),
        (200, [(b"Content-Length", b"3"), (b"Connection", b"close")]),
        (200, [(b"Content-Length", b"3"), (b"Host", b"odd")]),
    ],
)
def test_response_head_matches_send(
    version: bytes, method: bytes, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    wire = b"%s / HTTP/%s\r\nHost: x\r\n\r\n" % (method, version)
    ref, fast = h11.Connection(h11.SERVER), h11.Connection(h11.SERVER)
    for conn in (ref, fast):
        conn.receive_data(wire)
        assert type(conn.next_event()) is h11.Request
        assert type(conn.next_event()) is h11.EndOfMessage
    response = h11.Response(status_code=status, headers=headers, reason=b"OK")
    expected = ref.send(response)
    got = h11fast.response_head(fast, response)
    if version == b"1.0":
        assert got is None  # h11 adds Connection: close: left to send()
        return
    assert got == expected
    assert _states(fast) == _states(ref)
    body = b"" if method == b"HEAD" or status == 204 else b"abc"
    if body:
        ref.send(h11.Data(data=body))
    ref.send(h11.EndOfMessage())
    h11fast.end_sent_body(fast)
    assert (fast.our_state, fast.their_state) == (ref.our_state, ref.their_state)


def test_end_received_body_is_what_the_reader_reports() -> None:
    ref, fast = h11.Connection(h11.CLIENT), h11.Connection(h11.CLIENT)
    for conn in (ref, fast):
        conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
        assert type(conn.next_event()) is h11.Response
    ref.receive_data(b"abc")
    assert type(ref.next_event()) is h11.Data
    assert type(ref.next_event()) is h11.EndOfMessage
    h11fast.end_received_body(fast)  # the caller counted the 3 bytes itself
    assert _states(fast) == _states(ref)
    fast.start_next_cycle()
    ref.start_next_cycle()
    assert _states(fast) == _states(ref)


@pytest.mark.parametrize("most", [7, 100])
@pytest.mark.parametrize("split", [0, 10, 30, 40, 41])
def test_take_received_body_is_what_the_reader_reports(split: int, most: int) -> None:
    # A 30-byte body, then a pipelined request: part of it fed to h11 with
    # the head (``split`` bytes after the head), the rest still in our buffer.
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n"
    wire = head + b"b" * 30 + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    ref, fast = h11.Connection(h11.SERVER), h11.Connection(h11.SERVER)
    ref.receive_data(wire)
    assert type(ref.next_event()) is h11.Request
    body = b""
    while type(event := ref.next_event()) is h11.Data:
        body += event.data
    assert type(event) is h11.EndOfMessage
    fast.receive_data(wire[: len(head) + split])
    assert type(fast.next_event()) is h11.Request
    buffer = bytearray(wire[len(head) + split :])
    taken = b""
    while h11fast.received_body_left(fast):
        taken += h11fast.take_received_body(fast, buffer, most)
    assert taken == body
    assert _states(fast) == _states(ref)
    # Nothing past the body was taken: the next request parses as h11 has it.
    fast.receive_data(bytes(buffer))
    for conn in (ref, fast):
        conn.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"0")]))
        conn.send(h11.EndOfMessage())
        conn.start_next_cycle()
        request = conn.next_event()
        assert type(request) is h11.Request
        assert request.target == b"/next"
    assert _states(fast) == _states(ref)


def test_take_received_body_short_body_is_h11s_error() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    assert type(conn.next_event()) is h11.Request
    assert h11fast.take_received_body(conn, bytearray(), 5) == b"ab"
    assert h11fast.take_received_body(conn, bytearray(), 5) == b""
    assert h11fast.received_body_left(conn) == 3
    conn.receive_data(b"")
    with pytest.raises(h11.RemoteProtocolError, match="received 2 bytes, expected 5"):
        conn.next_event()


def test_error_state_like_send() -> None:
    conn = h11.Connection(h11.SERVER)
    response = h11.Response(status_code=200, headers=[(b"Content-Length", b"1")])
    h11fast.response_head(conn, response)
    with pytest.raises(h11.LocalProtocolError):
        h11fast.response_head(conn, response)  # a second head mid-body
    assert conn.our_state is h11.ERROR
    with pytest.raises(h11.LocalProtocolError):
        h11fast.end_sent_body(conn)


def test_headers_are_what_normalisation_gives() -> None:
    pairs = [(b"Host", b"x"), (b"Content-Length", b"3"), (b"X-A", b"b"), (b"X-A", b"c")]
    fast = h11.Request(method=b"POST", target=b"/", headers=h11fast.headers(pairs), _parsed=True)
    ref = h11.Request(method=b"POST", target=b"/", headers=pairs)
    assert fast.headers._full_items == ref.headers._full_items
    assert fast == ref
