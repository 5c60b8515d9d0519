"""The request body, from the client's side: framing checks, admission, counting.

``request_framing`` checks a request head's framing (RFC 9112). ``admit_body``
reads a body of up to GATEWAY_REQUEST_BUFFER_BYTES whole, or a larger body's
first that many bytes, before a backend connection is taken (docs/hardening.md,
Body admission), so a slow or malformed upload never holds or reaches a
backend. A Content-Length body is counted (``counted_piece``: bytes taken from
the buffers with h11's reader told), a chunked one parsed by h11
(``body_event``) with each chunk size checked as soon as its line is parsed
(``check_chunk``). ``send_body`` streams what is left up to the backend.
``Downstream`` is what the relay and this module use of the client connection.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import h11

from gateway import h11fast
from gateway.errors import (
    BadRequest,
    ClientGone,
    GatewayError,
    PayloadTooLarge,
    ReadTimeout,
    RequestTimeout,
    UpstreamClosed,
)
from gateway.flow import StreamClosed
from gateway.headers import full_items, valid_host
from gateway.upstream import Sink, UpstreamConnection

if TYPE_CHECKING:
    from gateway.accesslog import Record
    from gateway.headers import Header
    from gateway.state import Gateway


class Downstream(Sink, Protocol):
    """What the relay uses of the client connection (``protocol.ClientConnection``),
    and nothing else; ``Sink``'s members are what ``relay_body`` writes through.
    Plain attributes and methods: reaching them through the interface costs nothing."""

    gw: Gateway
    h11: h11.Connection  # its state moved by h11fast; check_chunk reads its chunk reader
    client_ip_bytes: bytes
    trusted: bool
    eof: bool  # the client half-closed

    def take_body(self, most: int) -> bytes: ...

    def finish_empty_body(self) -> bool: ...

    def send_continue(self) -> None: ...

    def next_event(self) -> Any: ...

    async def wait_for_data(self, deadline: float | None = None) -> None: ...

    def add_response_headers(self, headers: list[Header], rec: Record) -> None: ...

    def write(self, data: bytes) -> None: ...


def request_framing(request: h11.Request) -> tuple[int | None, bool]:
    """(Content-Length or None, chunked), after RFC 9112's checks of the head: 400 for
    both framings at once, for Transfer-Encoding in HTTP/1.0, for an invalid Host.

    RFC 9112 6.3: a message with both "ought to be handled as an error"; a
    proxy that forwarded either reading would desync from the next hop. 6.1:
    Transfer-Encoding in an HTTP/1.0 request is faulty framing (an HTTP/1.0
    hop cannot have sent it), so the connection is closed. 3.2: a Host that
    is not ``uri-host [":" port]`` is a 400.
    """
    length: int | None = None
    chunked = False
    for _, name, value in full_items(request.headers):
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"host" and not valid_host(value):
            raise BadRequest("invalid Host header")
    if chunked:
        if length is not None:
            raise BadRequest("request has both Content-Length and Transfer-Encoding")
        if request.http_version != b"1.1":
            raise BadRequest("HTTP/1.0 request with Transfer-Encoding")
    return length, chunked


async def admit_body(
    client: Downstream, limit: int, length: int | None, chunked: bool, buffer_bytes: int, rec: Record
) -> tuple[bytes, bool]:
    """(bytes held, whole body held): the body until it ends or ``buffer_bytes`` are held.

    Bounded by the limit, and by GATEWAY_CLIENT_BODY_TIMEOUT between reads; a
    framing error surfaces here, before anything went upstream.
    """
    if not chunked:
        # A Content-Length body: bytes to count, not to parse (its length is
        # within the limit, checked above), taken whole or up to the buffer.
        assert length is not None
        want = min(length, buffer_bytes)
        pieces: list[bytes] = []
        while want:
            data = await counted_piece(client, want, rec)
            pieces.append(data)
            want -= len(data)
        return b"".join(pieces), length <= buffer_bytes
    held: list[bytes] = []
    size = 0
    # A declared length within the buffer is read to its end (its EndOfMessage
    # included), so a body of exactly GATEWAY_REQUEST_BUFFER_BYTES is held whole.
    whole = length is not None and length <= buffer_bytes
    while whole or size < buffer_bytes:
        event = await body_event(client, limit, chunked, rec)
        if isinstance(event, h11.EndOfMessage):
            # Request trailers are dropped, as nginx does: a backend that
            # merged them into the head would let a client smuggle Host or
            # framing fields past our checks (RFC 9110 6.5.1).
            return b"".join(held), True
        held.append(event.data)
        size += len(event.data)
    return b"".join(held), False


async def body_event(client: Downstream, limit: int, chunked: bool, rec: Record) -> h11.Data | h11.EndOfMessage:
    """The next piece of the request body, counted against the limit (413).

    A pause longer than GATEWAY_CLIENT_BODY_TIMEOUT between reads is 408
    (nginx's client_body_timeout). For a chunked body each chunk's declared
    size is checked as soon as its size line is parsed: over 16 hex digits is
    400, over what the limit leaves is 413 at once, rather than waiting for
    bytes that will never be forwarded (RFC 9112 7.1; docs/hardening.md, Strict request framing).
    """
    loop = asyncio.get_running_loop()
    pause_s = client.gw.config.client_body_timeout_s
    try:
        while True:
            event = client.next_event()
            if event is not h11.NEED_DATA:
                break
            if chunked:
                check_chunk(client, limit, rec.bytes_in)
            await client.wait_for_data(loop.time() + pause_s)
    except (TimeoutError, h11.RemoteProtocolError, StreamClosed) as exc:
        raise _body_error(exc, pause_s) from None
    kind = type(event)
    if kind is h11.Data:
        rec.bytes_in += len(event.data)
        if limit and rec.bytes_in > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        return event  # type: ignore[no-any-return]  # h11 types next_event() loosely
    if kind is h11.EndOfMessage:
        return event  # type: ignore[no-any-return]  # h11 types next_event() loosely
    if kind is h11.ConnectionClosed:
        raise ClientGone()
    raise BadRequest(f"unexpected {kind.__name__} in request body")  # pragma: no cover


def _body_error(exc: BaseException, pause_s: float) -> GatewayError | ClientGone:
    """What a failed read of the request body is to the client: a pause over
    GATEWAY_CLIENT_BODY_TIMEOUT is 408, bad framing (h11's error) 400, a close
    the client's leaving."""
    if isinstance(exc, TimeoutError):
        return RequestTimeout(f"client paused its request body for more than {pause_s:g}s")
    if isinstance(exc, h11.RemoteProtocolError):
        return BadRequest(f"malformed request body: {exc}")
    return ClientGone()


async def counted_piece(client: Downstream, most: int, rec: Record) -> bytes:
    """The next bytes (up to ``most``) of a Content-Length request body, counted,
    not parsed (``ClientConnection.take_body``). A pause longer than
    GATEWAY_CLIENT_BODY_TIMEOUT is 408; a close before the end is h11's error
    for it, 400, as when h11 reads the body."""
    data = client.take_body(most)
    if not data:
        loop = asyncio.get_running_loop()
        pause_s = client.gw.config.client_body_timeout_s
        try:
            while not data:
                if client.eof:
                    client.next_event()  # h11 gets the EOF and reports the short body
                await client.wait_for_data(loop.time() + pause_s)
                data = client.take_body(most)
        except (TimeoutError, h11.RemoteProtocolError, StreamClosed) as exc:
            raise _body_error(exc, pause_s) from None
    rec.bytes_in += len(data)
    return data


# RFC 9112 7.1 leaves the chunk size unbounded; the contract (and nginx, which
# parses it into an off_t) takes at most 16 hex digits. h11 takes 20.
MAX_CHUNK_SIZE = 1 << 64


def check_chunk(client: Downstream, limit: int, received: int) -> None:
    # h11's ChunkedReader keeps what is left of the current chunk in
    # ``_bytes_in_chunk``, set as soon as the size line is parsed (private,
    # like ``Headers._full_items`` in headers.full_items).
    left = getattr(client.h11._reader, "_bytes_in_chunk", 0)
    if left:
        if left >= MAX_CHUNK_SIZE:
            raise BadRequest("chunk size over 16 hex digits")
        if limit and received + left > limit:
            raise PayloadTooLarge(f"a chunk of the request body is declared over the limit of {limit} bytes")


async def send_body(
    client: Downstream, conn: UpstreamConnection, limit: int, chunked: bool, timeout_s: float, rec: Record
) -> None:
    """Stream the rest of a body larger than GATEWAY_REQUEST_BUFFER_BYTES upstream.

    On any failure the upstream connection is aborted so the coroutine
    waiting for the response wakes up and reports this task's error.
    """
    loop = asyncio.get_running_loop()
    try:
        if not chunked:
            # Counted, as at admission: bytes to the backend as they come.
            left = h11fast.received_body_left(client.h11)
            while left:
                data = await counted_piece(client, left, rec)
                left -= len(data)
                try:
                    conn.write(data)
                    await conn.drain(loop.time() + timeout_s)
                except TimeoutError:
                    raise ReadTimeout(f"upstream accepted no body data for {timeout_s:g}s") from None
                except StreamClosed:
                    raise UpstreamClosed("upstream closed the connection while the request body was sent") from None
            h11fast.end_sent_body(conn.h11)
            return
        while True:
            event = await body_event(client, limit, chunked, rec)
            try:
                if type(event) is h11.EndOfMessage:
                    conn.write(conn.h11.send(h11.EndOfMessage()))  # trailers dropped (see admit_body)
                    return
                conn.write(conn.h11.send(event))
                await conn.drain(loop.time() + timeout_s)
            except TimeoutError:
                raise ReadTimeout(f"upstream accepted no body data for {timeout_s:g}s") from None
            except StreamClosed:
                raise UpstreamClosed("upstream closed the connection while the request body was sent") from None
    except (GatewayError, ClientGone, StreamClosed, TimeoutError):
        conn.abort()
        raise
