"""Heads written from known-good parts, and Content-Length bodies counted, not parsed.

``h11.Connection.send(Response)`` rebuilds the response through
``_clean_up_response_headers_for_sending``, which validates every header
again with h11's regexes, and its writers format each header once more. For
a head whose parts h11 parsed (or we validated) that is pure cost. These
helpers write the same bytes h11's writers would and move h11's state
machine with ``Connection._process_event``, the very call ``send`` and
``next_event`` make, so ``our_state``/``their_state``, keep-alive, the
reader and the writer stay exactly what h11 would have them be. Body bytes
of a ``Content-Length`` message are counted by the caller; when all of them
went through, ``end_*`` records the ``EndOfMessage`` that h11's
``ContentLengthReader``/``ContentLengthWriter`` would have produced at that
point.

``headers()`` hands h11 a ready ``Headers`` object, which its events take
without a second ``normalize_and_validate`` pass.

These touch h11 internals (``_process_event``, ``_cstate.keep_alive``,
``Headers``);
uv.lock pins h11, and tests/test_h11fast.py checks the bytes and the states
against h11's own ``send`` for this version (``H11_VERSION``).
"""

from __future__ import annotations

from collections.abc import Sequence

import h11
from h11._headers import Headers
from h11._readers import ContentLengthReader
from h11._receivebuffer import ReceiveBuffer

from gateway.headers import FullHeader, Header

H11_VERSION = "0.16.0"


def headers(pairs: Sequence[Header]) -> Headers:
    """h11 ``Headers`` for an event, from (name, value) pairs that h11 parsed
    or we validated, with at most one Content-Length and no Transfer-Encoding
    other than ``chunked`` (what h11's normalisation would have checked)."""
    return Headers([(raw, raw.lower(), value) for raw, value in pairs])


def _head(first_line: bytes, items: Sequence[FullHeader]) -> bytes:
    # h11's write_headers: Host first, then the rest in order.
    lines = [first_line]
    for raw, name, value in items:
        if name == b"host":
            lines.append(raw + b": " + value)
    for raw, name, value in items:
        if name != b"host":
            lines.append(raw + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _process(conn: h11.Connection, event: h11.Request | h11.Response | h11.EndOfMessage) -> None:
    if conn.our_state is h11.ERROR:
        raise h11.LocalProtocolError("Can't send data when our state is ERROR")
    try:
        conn._process_event(conn.our_role, event)
    except BaseException:
        conn.send_failed()  # what send() does on any error
        raise


def request_head(conn: h11.Connection, request: h11.Request, *, end: bool) -> bytes:
    """``conn.send(request)`` (+ ``conn.send(EndOfMessage())`` when ``end``) for
    a request with validated headers and no body or a Content-Length/chunked
    body the caller frames with h11 afterwards."""
    _process(conn, request)
    data = _head(b"%s %s HTTP/1.1" % (request.method, request.target), request.headers._full_items)
    if end:
        # No body: h11's framing is Content-Length 0, whose writer writes nothing.
        _process(conn, h11.EndOfMessage())
    return data


def response_head(conn: h11.Connection, response: h11.Response) -> bytes | None:
    """``conn.send(response)`` for a Content-Length-framed response with
    validated headers, or None when h11 would change its headers (then use
    ``conn.send``): only to add ``Connection: close`` for a client that
    did not ask for keep-alive."""
    if not conn._cstate.keep_alive:
        return None
    _process(conn, response)
    return _head(b"HTTP/1.1 %d %s" % (response.status_code, response.reason), response.headers._full_items)


def end_sent_body(conn: h11.Connection) -> None:
    """Every byte of our Content-Length body went out: our EndOfMessage (writes nothing)."""
    _process(conn, h11.EndOfMessage())


def end_received_body(conn: h11.Connection) -> None:
    """Every byte of the peer's Content-Length body came in: its EndOfMessage,
    as h11's ContentLengthReader reports it at that point."""
    conn._process_event(conn.their_role, h11.EndOfMessage())


def take_received_body(conn: h11.Connection, buffer: bytearray, most: int) -> bytes:
    """Up to ``most`` bytes of the peer's Content-Length body, counted, not
    parsed: what h11 already holds first, then ``buffer`` (bytes received
    after it, never fed to h11); b"" when neither holds any. The reader's
    count goes down by what was taken, as ``ContentLengthReader`` does for
    each ``Data`` event (which changes no state), and at 0 the EndOfMessage
    is recorded, so h11 stands exactly where its own reading would leave it.
    Only while the peer is sending a Content-Length body."""
    reader = conn._reader
    assert type(reader) is ContentLengthReader
    n = min(most, reader._remaining)
    held = conn._receive_buffer
    if held and len(held) <= n:
        data = bytes(held)  # all of it: one copy (extracting copies twice)
        conn._receive_buffer = ReceiveBuffer()
    elif held:
        data = bytes(held.maybe_extract_at_most(n) or b"")
    elif len(buffer) > n:
        data = bytes(buffer[:n])
        del buffer[:n]
    else:
        data = bytes(buffer)
        buffer.clear()
    reader._remaining -= len(data)
    if not reader._remaining:
        end_received_body(conn)
    return data


def received_body_left(conn: h11.Connection) -> int:
    """Bytes of the peer's Content-Length body not yet taken (0 once it ended)."""
    return getattr(conn._reader, "_remaining", 0)
