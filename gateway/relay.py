"""proxy(): one request from a client to a backend and its response back.

One request: check the framing and the body limit; admit the body (read it
whole, or its first GATEWAY_REQUEST_BUFFER_BYTES, before a backend connection
is taken: a slow or malformed upload never holds or reaches a backend; the
request body's side is ``gateway.upload``); take a
pooled connection, send the head with what is held, stream the rest up (a
task, so an early response or a 413 is seen at once), wait for the response
head, stream the body down with backpressure on both sides. Both h11 sides
DONE: the connection goes back to the pool; anything else: it is closed. A
reused connection that closes before any response byte gets the request once
more on a fresh one when it is idempotent with its body held. Errors before
the first response byte become the JSON errors of docs/forwarding.md; after it, the
client connection is closed so a truncated body never looks complete (Go's
``ErrAbortHandler``, uvicorn's ``response_started``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import h11

from gateway import h11fast
from gateway.api import Match
from gateway.errors import (
    GatewayError,
    PayloadTooLarge,
    ReadTimeout,
    UpstreamClosed,
)
from gateway.flow import StreamClosed
from gateway.headers import (
    client_response_headers,
    full_items,
    rewrite_location,
    trace_context,
    upstream_request_headers,
)
from gateway.upload import Downstream, admit_body, request_framing, send_body
from gateway.upstream import UpstreamConnection

if TYPE_CHECKING:
    from gateway.accesslog import Record

# RFC 9110 9.2.2. Only these may go out twice, and only when nothing of the
# response came back (Go's transport.go shouldRetryRequest).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


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
        held, complete = await admit_body(client, limit, length, chunked, gw.config.request_buffer_bytes, rec)

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
                send_body(client, conn, limit, chunked, timeout_s, rec)
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
