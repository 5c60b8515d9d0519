"""proxy(): the only place body bytes cross between a client and a backend.

One request: check the framing and the body limit; admit the body (read it
whole, or its first GATEWAY_REQUEST_BUFFER_BYTES, before a backend connection
is taken: a slow or malformed upload never holds or reaches a backend); take a
pooled connection, send the head with what is held, stream the rest up (a
task, so an early response or a 413 is seen at once), wait for the response
head, stream the body down with backpressure on both sides. Both h11 sides
DONE: the connection goes back to the pool; anything else: it is closed. A
reused connection that closes before any response byte gets the request once
more on a fresh one when it is idempotent with its body held. Errors before
the first response byte become the contract's JSON errors; after it, the
client connection is closed so a truncated body never looks complete (Go's
``ErrAbortHandler``, uvicorn's ``response_started``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

import h11

from gateway import h11fast
from gateway.api import Match
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
from gateway.headers import (
    client_response_headers,
    full_items,
    rewrite_location,
    trace_context,
    upstream_request_headers,
    valid_host,
)
from gateway.upstream import Sink, UpstreamConnection

if TYPE_CHECKING:
    from gateway.accesslog import Record
    from gateway.headers import Header
    from gateway.state import Gateway

# RFC 9110 9.2.2. Only these may go out twice, and only when nothing of the
# response came back (Go's transport.go shouldRetryRequest).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Downstream(Sink, Protocol):
    """What the relay uses of the client connection (``protocol.ClientConnection``),
    and nothing else; ``Sink``'s members are what ``relay_body`` writes through.
    Plain attributes and methods: reaching them through the interface costs nothing."""

    gw: Gateway
    h11: h11.Connection  # its state moved by h11fast; _check_chunk reads its chunk reader
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


async def proxy(client: Downstream, request: h11.Request, match: Match, rec: Record) -> None:
    gw = client.gw
    route = match.route
    assert route is not None
    length, chunked = request_framing(request)
    limit = route.max_body_bytes
    if limit and length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    has_body = chunked or bool(length)
    held: bytes = b""
    complete = True  # the whole body is held (or there is none)
    if not has_body:
        # No body (Content-Length 0 in h11's framing): its end is known now,
        # as h11's ContentLengthReader(0) would report it on the next read.
        h11fast.end_received_body(client.h11)
    else:
        # Admission (docs/hardening.md, Body admission): read the body, or its first
        # GATEWAY_REQUEST_BUFFER_BYTES, before a backend connection is taken, so a
        # slow or broken upload never holds one (nginx's client_body_buffer_size).
        client.send_continue()
        held, complete = await _admit_body(client, limit, length, chunked, gw.config.request_buffer_bytes, rec)

    items = full_items(request.headers)
    traceparent, trace_id = trace_context(items)
    rec.trace_id = trace_id.decode("ascii")
    headers = upstream_request_headers(
        items,
        client_ip=client.client_ip_bytes,
        trusted=client.trusted,
        prefix=route.prefix_bytes,
        request_id=rec.request_id_bytes,
        chunked=chunked,
        default_host=route.host_header,
        traceparent=traceparent,
    )
    # Every byte here was validated by h11's parser or by us (config, request
    # id, trace context): skip h11's second validation pass (``_parsed``, and
    # a ready Headers object: no second normalisation).
    head = h11.Request(
        method=request.method, target=match.upstream_target, headers=h11fast.headers(headers), _parsed=True
    )
    pool = gw.pools[route.name]
    timeout_s = route.upstream_timeout_s
    # Go's shouldRetryRequest: an idempotent request whose body is held whole
    # (or empty) may go out again; a streamed one, or a POST, may not.
    retry_allowed = complete and request.method in IDEMPOTENT

    fresh = False
    while True:
        conn = await pool.acquire(route.connect_timeout_s, fresh=fresh)
        try:
            await _exchange(client, conn, head, held, complete, not has_body, limit, chunked, timeout_s, request, rec)
        except UpstreamClosed as exc:
            conn.abort()
            pool.discard(conn)
            # A pooled connection the backend closed just as we reused it: no
            # byte came back, and the request is idempotent with its body at hand
            # (or nothing of it was written), so it goes out again, once, on a
            # new connection (docs/hardening.md, Resend).
            if (
                not fresh
                and conn.reused
                and conn.bytes_received == 0
                and (retry_allowed or exc.__cause__ is _UNSENT)
            ):
                gw.metrics.resent(route.name)
                fresh = True
                continue
            raise
        except BaseException:
            conn.abort()
            pool.discard(conn)
            raise
        pool.release(conn)
        return


class _Unsent(Exception):
    """The cause of an UpstreamClosed raised before a byte of the request was written."""


_UNSENT = _Unsent()


async def _admit_body(
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
            data = await _counted_piece(client, want, rec)
            pieces.append(data)
            want -= len(data)
        return b"".join(pieces), length <= buffer_bytes
    held: list[bytes] = []
    size = 0
    # A declared length within the buffer is read to its end (its EndOfMessage
    # included), so a body of exactly GATEWAY_REQUEST_BUFFER_BYTES is held whole.
    whole = length is not None and length <= buffer_bytes
    while whole or size < buffer_bytes:
        event = await _body_event(client, limit, chunked, rec)
        if isinstance(event, h11.EndOfMessage):
            # Request trailers are dropped, as nginx does: a backend that
            # merged them into the head would let a client smuggle Host or
            # framing fields past our checks (RFC 9110 6.5.1).
            return b"".join(held), True
        held.append(event.data)
        size += len(event.data)
    return b"".join(held), False


async def _body_event(client: Downstream, limit: int, chunked: bool, rec: Record) -> h11.Data | h11.EndOfMessage:
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
                _check_chunk(client, limit, rec.bytes_in)
            await client.wait_for_data(loop.time() + pause_s)
    except TimeoutError:
        raise RequestTimeout(f"client paused its request body for more than {pause_s:g}s") from None
    except h11.RemoteProtocolError as exc:
        raise BadRequest(f"malformed request body: {exc}") from None
    except StreamClosed:
        raise ClientGone() from None
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


async def _counted_piece(client: Downstream, most: int, rec: Record) -> bytes:
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
        except TimeoutError:
            raise RequestTimeout(f"client paused its request body for more than {pause_s:g}s") from None
        except h11.RemoteProtocolError as exc:
            raise BadRequest(f"malformed request body: {exc}") from None
        except StreamClosed:
            raise ClientGone() from None
    rec.bytes_in += len(data)
    return data


# RFC 9112 7.1 leaves the chunk size unbounded; the contract (and nginx, which
# parses it into an off_t) takes at most 16 hex digits. h11 takes 20.
MAX_CHUNK_SIZE = 1 << 64


def _check_chunk(client: Downstream, limit: int, received: int) -> None:
    # h11's ChunkedReader keeps what is left of the current chunk in
    # ``_bytes_in_chunk``, set as soon as the size line is parsed (private,
    # like ``Headers._full_items`` in headers.full_items).
    left = getattr(client.h11._reader, "_bytes_in_chunk", 0)
    if left:
        if left >= MAX_CHUNK_SIZE:
            raise BadRequest("chunk size over 16 hex digits")
        if limit and received + left > limit:
            raise PayloadTooLarge(f"a chunk of the request body is declared over the limit of {limit} bytes")


async def _exchange(
    client: Downstream,
    conn: UpstreamConnection,
    head: h11.Request,
    held: bytes,
    complete: bool,
    no_body: bool,
    limit: int,
    chunked: bool,
    timeout_s: float,
    request: h11.Request,
    rec: Record,
) -> None:
    body_task: asyncio.Task[None] | None = None
    rec.upstream_start = time.perf_counter()
    try:
        if conn.closed:
            raise UpstreamClosed("upstream connection closed before the request was sent") from _UNSENT
        counted = not no_body and not chunked
        # A Content-Length body held at hand leaves with the head, uncopied
        # (counted: h11's writer is told at the end, h11fast.end_sent_body).
        conn.send_head(head, end=no_body, body=held if counted else b"")
        if counted:
            if complete:
                h11fast.end_sent_body(conn.h11)
        elif not no_body:
            try:
                data = conn.h11.send(h11.Data(data=held)) if held else b""
                if complete:
                    data += conn.h11.send(h11.EndOfMessage())
                if data:
                    conn.write(data)
            except StreamClosed:
                raise UpstreamClosed("upstream closed the connection while the request body was sent") from None
        if not complete:
            body_task = asyncio.get_running_loop().create_task(
                _send_body(client, conn, limit, chunked, timeout_s, rec)
            )
        try:
            response = await conn.receive_response(asyncio.get_running_loop().time() + timeout_s)
        except TimeoutError:
            _raise_body_error(body_task)
            raise ReadTimeout(f"no response from upstream within {timeout_s:g}s") from None
        except GatewayError:
            _raise_body_error(body_task)
            raise
        await _relay_response(client, conn, request, response, timeout_s, rec)
    finally:
        rec.upstream_end = time.perf_counter()
        if body_task is not None and not body_task.done():
            # An early response (RFC 9110 15.5: e.g. 401 before the upload is
            # read): the rest of the body is not forwarded; neither connection
            # can be reused since neither message is complete.
            body_task.cancel()
            try:
                await body_task
            except BaseException:
                pass


def _raise_body_error(body_task: asyncio.Task[None] | None) -> None:
    """If streaming the request body failed, that failure is the real cause."""
    if body_task is not None and body_task.done() and not body_task.cancelled():
        exc = body_task.exception()
        if exc is not None:
            raise exc


async def _send_body(
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
                data = await _counted_piece(client, left, rec)
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
            event = await _body_event(client, limit, chunked, rec)
            try:
                if type(event) is h11.EndOfMessage:
                    conn.write(conn.h11.send(h11.EndOfMessage()))  # trailers dropped (see _admit_body)
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


async def _relay_response(
    client: Downstream,
    conn: UpstreamConnection,
    request: h11.Request,
    response: h11.Response,
    timeout_s: float,
    rec: Record,
) -> None:
    loop = asyncio.get_running_loop()
    items = full_items(response.headers)
    has_te = False
    length: int | None = None
    for _, name, value in items:
        if name == b"transfer-encoding":
            has_te = True
        elif name == b"content-length":
            length = int(value)  # h11 checked it: one value, digits only
    has_cl = length is not None
    out_headers = client_response_headers(items, rec.request_id_bytes)
    if has_te and has_cl:
        # RFC 9112 6.3: Transfer-Encoding wins; the length must not be passed
        # on, and the connection is not trusted for another request.
        out_headers = [(n, v) for n, v in out_headers if n.lower() != b"content-length"]
        conn.reusable = False
    config = client.gw.config
    if config.rewrite_location:
        route = rec.route
        origin = route.upstream.origin.encode("ascii")
        out_headers = [
            (n, rewrite_location(v, origin, route.strip_to, route.prefix_bytes))
            if n.lower() == b"location"
            else (n, v)
            for n, v in out_headers
        ]
    if config.server_timing:
        now = time.perf_counter()
        upstream_ms = (now - rec.upstream_start) * 1000
        gateway_ms = (now - rec.start) * 1000 - upstream_ms
        out_headers.append(
            (b"Server-Timing", b"gateway;dur=%.3f, upstream;dur=%.3f" % (gateway_ms, upstream_ms))
        )
    client.add_response_headers(out_headers, rec)
    rec.status = response.status_code
    hconn = client.h11
    head = h11.Response(
        status_code=response.status_code, headers=h11fast.headers(out_headers), reason=response.reason, _parsed=True
    )
    if length is not None and not has_te:
        head_bytes = h11fast.response_head(hconn, head)
        if head_bytes is not None:
            if request.method == b"HEAD" or response.status_code in (204, 304):
                length = 0  # h11's framing: no body whatever the header says
            await _relay_fixed(client, conn, head_bytes, length, timeout_s, rec)
            return
    # The head goes to h11 (and so the response "starts") only at the first
    # write: if the backend's body turns out broken before that, the client
    # still gets a clean 502 instead of a cut-off response.
    held: list[h11.Data] | None = []
    out: list[bytes] = []
    sent = 0
    # Write only when about to wait on the backend: a small response leaves
    # in one write, a large one in chunks as they arrive (coalesced writes).
    while True:
        event = conn.next_event()
        kind = type(event)
        if event is h11.NEED_DATA:
            if held is not None:
                out.append(hconn.send(head))
                out.extend(hconn.send(data) for data in held)
                held = None
                rec.response_started = True
            client.write(b"".join(out))
            out.clear()
            await client.drain(loop.time() + timeout_s)
            try:
                await conn.wait_for_data(loop.time() + timeout_s)
            except TimeoutError:
                raise ReadTimeout(f"upstream sent no body data for {timeout_s:g}s") from None
            except StreamClosed:
                raise UpstreamClosed("upstream closed mid-response") from None
        elif kind is h11.Data:
            sent += len(event.data)
            if held is not None:
                held.append(event)
            else:
                out.append(hconn.send(event))
        elif kind is h11.EndOfMessage:
            if held is not None:
                out.append(hconn.send(head))
                out.extend(hconn.send(data) for data in held)
                rec.response_started = True
            trailers = event.headers if has_te and request.http_version == b"1.1" else []
            out.append(hconn.send(h11.EndOfMessage(headers=trailers)))
            client.write(b"".join(out))
            rec.bytes_out = sent
            return
        elif kind is h11.ConnectionClosed:
            raise UpstreamClosed("upstream closed mid-response")
        else:  # pragma: no cover
            raise UpstreamClosed(f"unexpected upstream event {kind.__name__}")
        rec.bytes_out = sent


async def _relay_fixed(
    client: Downstream,
    conn: UpstreamConnection,
    head: bytes,
    length: int,
    timeout_s: float,
    rec: Record,
) -> None:
    """A Content-Length body: bytes to count, not to parse. What came with the
    head leaves with it in one write; the rest goes from the backend's socket
    to the client's transport as it arrives (``relay_body``). h11 still parsed
    the head and records both ends of the message."""
    body = conn.take_body(length)
    rec.response_started = True
    if len(body) <= 65536:
        client.write(head + body)
    else:
        client.write(head)
        client.write(body)
    sent = len(body)
    rec.bytes_out = sent
    if sent < length:
        try:
            await conn.relay_body(client, length - sent, timeout_s)
        finally:
            rec.bytes_out = sent + conn.relayed
    else:
        h11fast.end_received_body(conn.h11)
    h11fast.end_sent_body(client.h11)
