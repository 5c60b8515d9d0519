"""ClientConnection: the h11 SERVER side of one client connection.

One task per connection reads request heads and answers them in order, so
keep-alive and pipelined requests are served one after another (h11 pauses
on a pipelined request until ``start_next_cycle``). Limits: the request head
must arrive within ``GATEWAY_CLIENT_HEADER_TIMEOUT`` (else 408) and fit in
``GATEWAY_MAX_HEADER_BYTES`` (else 431); an idle keep-alive connection is
closed after ``GATEWAY_KEEPALIVE_TIMEOUT``. Errors are sent only while h11
says a response can still start (h11's ``examples/trio-server.py``).
"""

from __future__ import annotations

import asyncio
import traceback
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11

from gateway import admin, h11fast
from gateway.accesslog import Record
from gateway.errors import (
    BadRequest,
    ClientGone,
    Forbidden,
    GatewayError,
    HeaderTooLarge,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
    VersionNotSupported,
    error_body,
)
from gateway.flow import HIGH_WATER, H11Protocol, StreamClosed
from gateway.headers import Header, forwarded_client, full_items, new_request_id, request_id_of
from gateway.relay import proxy
from gateway.upload import request_framing

if TYPE_CHECKING:
    from gateway.state import Gateway

REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_CAN_RESPOND = (h11.IDLE, h11.SEND_RESPONSE)
_CLOSE_AFTER = frozenset({400, 408, 413, 431, 505})
# After an error response with the request body unread, keep reading (and
# dropping) for a moment before closing, so the client reads our response
# instead of a reset (nginx's lingering_close).
LINGER_S = 2.0
JSON = b"application/json"
# Reading pauses earlier by what admission may hold of a request body, so a
# connection's input stays within flow.HIGH_WATER (plus one read) as before.
MIN_HIGH_WATER = 64 * 1024
DASHBOARD = b"/api/gateway/"


def _head_size(request: h11.Request) -> int:
    """Bytes of the request head as sent, give or take optional whitespace."""
    size = len(request.method) + len(request.target) + 14  # " ", " HTTP/1.1\r\n", final CRLF
    for raw, _, value in full_items(request.headers):
        size += len(raw) + len(value) + 4  # ": " and CRLF
    return size


class ClientConnection(H11Protocol):
    def __init__(self, gw: Gateway) -> None:
        super().__init__(h11.Connection(h11.SERVER, max_incomplete_event_size=gw.config.max_header_bytes))
        self.gw = gw
        self.task: asyncio.Task[None] | None = None
        self.in_flight = False
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.trusted = False
        self.cycles = 0
        self.closing = False  # shut down while busy: close once idle
        self._head_deadline = 0.0
        self.high_water = max(HIGH_WATER - gw.config.request_buffer_bytes, MIN_HIGH_WATER)

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        gw = self.gw
        if len(gw.connections) >= gw.config.max_connections:
            gw.metrics.refused += 1
            transport.close()  # over GATEWAY_MAX_CONNECTIONS: closed at once
            return
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "unix"
        self.client_ip_bytes = self.client_ip.encode("ascii", "replace")
        self.trusted = gw.is_trusted(self.client_ip)
        gw.connections.add(self)
        loop = asyncio.get_running_loop()
        self._head_deadline = loop.time() + gw.config.client_header_timeout_s
        self.task = loop.create_task(self.run())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.gw.connections.discard(self)
        if self.in_flight and self.task is not None:
            # The client is gone: stop waiting on its behalf (nginx's default,
            # proxy_ignore_client_abort off).
            self.task.cancel()

    # --- the connection's life ----------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                request = await self._read_head()
                if request is None:
                    break
                await self._handle(request)
                if not self._next_cycle():
                    break
            if not self.closed and (self.h11.their_state in (h11.SEND_BODY, h11.ERROR) or self.has_buffered_data):
                await self._linger()  # unread input: let the client read our answer first
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug: log it, never let it reach the loop silently
            self.gw.log.event("error", "connection_error", error=repr(exc), traceback=traceback.format_exc())
        finally:
            if not self.closed:
                self.transport.close()

    def shutdown(self) -> None:
        """Drain: idle connections close now; busy ones finish with Connection: close.

        Idle means between two requests of a keep-alive connection. A new
        connection (its request may still be on the wire) and one whose bytes
        arrived but are not parsed yet are answered, with Connection: close,
        like requests in flight; the header timeout bounds a silent one.
        """
        self.closing = True
        if (
            self.cycles
            and not self.in_flight
            and not self.closed
            and not self.has_buffered_data
            and not self.h11.trailing_data[0]
        ):
            self.transport.close()

    async def _read_head(self) -> h11.Request | None:
        cfg = self.gw.config
        loop = asyncio.get_running_loop()
        try:
            # With no byte buffered (ours or h11's) h11 could only say NEED_DATA
            # (or, after EOF, ConnectionClosed: receive_event below sees that too).
            if self._buffer or self.h11.trailing_data[0]:
                event = self.next_event()
            else:
                event = h11.NEED_DATA
            if event is h11.NEED_DATA and self.cycles:
                # Between requests: wait for a first byte up to the keep-alive
                # timeout. While draining too: this client got a keep-alive
                # answer and may be sending its next request right now; the
                # server closes idle connections once the listener is closed.
                if self.closing:
                    return None  # the listener is closed (``shutdown``): idle now, so close
                try:
                    await self.wait_for_data(loop.time() + cfg.keepalive_timeout_s)
                except (TimeoutError, StreamClosed):
                    return None
                self._head_deadline = loop.time() + cfg.client_header_timeout_s
            if event is h11.NEED_DATA:
                try:
                    event = await self.receive_event(self._head_deadline)
                except TimeoutError:
                    if self.has_buffered_data or self.h11.trailing_data[0]:
                        self._respond_error(RequestTimeout(), None, None)
                    return None
                except StreamClosed:
                    return None
        except h11.RemoteProtocolError as exc:
            error = HeaderTooLarge() if exc.error_status_hint == 431 else BadRequest(f"malformed request: {exc}")
            self._respond_error(error, None, None)
            return None
        if type(event) is h11.Request:
            if len(event.headers) > cfg.max_header_count or _head_size(event) > cfg.max_header_bytes:
                # h11 bounds only an incomplete head; one that arrived whole in
                # a single read is measured here, and so is the header count
                # (Envoy's max_headers_count, 100 by default).
                self._respond_error(HeaderTooLarge(), None, None)
                return None
            return event
        return None  # ConnectionClosed

    async def _handle(self, request: h11.Request) -> None:
        gw = self.gw
        items = full_items(request.headers)
        # The client is the peer, or behind a trusted proxy the address it names
        # (docs/hardening.md, Operational endpoints): the access log shows it, the admin check uses it.
        client = forwarded_client(items, self.client_ip, gw.is_trusted) if self.trusted else self.client_ip
        rec = Record(client, request.method, request.target, request_id_of(items))
        self.in_flight = True
        gw.metrics.in_flight += 1
        try:
            if request.http_version not in (b"1.1", b"1.0"):
                # h11 parses any HTTP/x.y line; nginx answers 505 for a major version other than 1.
                raise VersionNotSupported()
            if request.target[:1] != b"/":
                raise BadRequest("request target must be a path (origin-form)")
            match = gw.router.match(request.target)
            if match is None:
                raise NotFound(f"no route for {rec.path.split('?', 1)[0]}")
            if match.endpoint is not None:
                rec.internal = match.endpoint != "not_found"
                request_framing(request)  # the same strict head as a forwarded request
                if not match.public and not gw.is_admin(client):
                    # nginx's allow/deny with real_ip: operational data (client
                    # addresses, query strings, internal URLs) stays inside.
                    raise Forbidden(f"{rec.path.split('?', 1)[0]} is not available to {client}")
                if match.endpoint == "dashboard_redirect":
                    self._redirect(request, rec)
                else:
                    answer = await admin.serve(gw, match.endpoint, request.method, match.rest)
                    status, content_type, body, extra = answer
                    self.respond(status, content_type, body, rec, request.method, extra)
            else:
                route = match.route
                assert route is not None
                rec.service = route.name
                rec.route = route
                rec.upstream = route.upstream.origin + match.upstream_target.decode("latin-1")
                await proxy(self, request, match, rec)
        except GatewayError as exc:
            rec.error = exc.code
            if exc.status >= 500:
                gw.log.event(
                    "warning", "upstream_error", request_id=rec.request_id, service=rec.service,
                    upstream=rec.upstream, error=exc.code, kind=type(exc).__name__, message=exc.message,
                )
            if not rec.response_started and self.h11.our_state in _CAN_RESPOND:
                self._respond_error(exc, rec, request.method)
            else:
                self.abort()  # mid-response: a truncated body must not look complete
        except (StreamClosed, ClientGone, TimeoutError):
            rec.error = "client_closed"
            rec.status = rec.status or 499
            self.abort()
        except asyncio.CancelledError:
            rec.error = "client_closed"
            rec.status = rec.status or 499
            raise
        except Exception as exc:  # a bug: answer 500 if we still can, and say so
            gw.log.event("error", "request_error", request_id=rec.request_id, error=repr(exc),
                         traceback=traceback.format_exc())
            rec.error = "internal_error"
            if not rec.response_started and self.h11.our_state in _CAN_RESPOND:
                error = GatewayError("internal gateway error")
                self._respond_error(error, rec, request.method)
            else:
                self.abort()
        finally:
            self.in_flight = False
            gw.metrics.in_flight -= 1
            gw.record(rec)

    def _next_cycle(self) -> bool:
        conn = self.h11
        if self.closed or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        self.cycles += 1
        return True

    async def _linger(self) -> None:
        """Half-close, then drop input for a moment, so the client reads our answer."""
        if self.transport.can_write_eof():
            self.transport.write_eof()
        try:
            async with asyncio.timeout(LINGER_S):
                while not self.eof:
                    self.discard_input()
                    await self.wait_for_data()
        except (TimeoutError, StreamClosed):
            pass

    # --- the request body -------------------------------------------------
    def finish_empty_body(self) -> bool:
        """Consume what is already buffered of the request body; True when it ended.

        For a request without a body h11 still wants its EndOfMessage read.
        """
        conn = self.h11
        while conn.their_state is h11.SEND_BODY:
            try:
                event = self.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return False
        return conn.their_state is h11.DONE

    def send_continue(self) -> None:
        """RFC 9110 10.1.1: a client waiting on ``Expect: 100-continue`` is told to send the body."""
        if self.h11.client_is_waiting_for_100_continue:
            self.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))

    def take_body(self, most: int) -> bytes:
        """Up to ``most`` bytes of a Content-Length request body, counted, not
        parsed (``h11fast.take_received_body``); b"" when none is buffered."""
        data = h11fast.take_received_body(self.h11, self._buffer, most)
        if self._reading_paused and not self.closed and len(self._buffer) < self.high_water:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    # --- responses the gateway makes itself -------------------------------
    def add_response_headers(self, headers: list[Header], rec: Record) -> None:
        if self.gw.draining:
            headers.append((b"Connection", b"close"))

    def respond(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        rec: Record,
        method: bytes,
        extra: tuple[Header, ...] = (),
    ) -> None:
        headers = [
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode("ascii")),
            (b"X-Request-ID", rec.request_id_bytes),
            *extra,
        ]
        # After a framing or size error the rest of the input can't be trusted
        # (it may be a smuggled request): close, as nginx does after a 400.
        if status in _CLOSE_AFTER or self.gw.draining or not self.finish_empty_body():
            headers.append((b"Connection", b"close"))
        conn = self.h11
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b"")))
        if method != b"HEAD" and body:
            data += conn.send(h11.Data(data=body))
            rec.bytes_out = len(body)
        data += conn.send(h11.EndOfMessage())
        rec.status = status
        rec.response_started = True
        self.write(data)

    def _redirect(self, request: h11.Request, rec: Record) -> None:
        """``/api/gateway`` -> 308 ``/api/gateway/`` (the query kept), as nginx redirects a directory."""
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed(f"{rec.method} is not allowed here; use GET or HEAD")
        q = request.target.find(b"?")
        location = DASHBOARD + (request.target[q:] if q >= 0 else b"")
        body = b'{"location": "%s"}' % DASHBOARD
        self.respond(308, JSON, body, rec, request.method, ((b"Location", location),))

    def _respond_error(self, error: GatewayError, rec: Record | None, method: bytes | None) -> None:
        if rec is None:
            # No request line to log against (bad head, 408, 431): still one access-log line.
            rec = Record(self.client_ip, b"-", b"-", new_request_id())
            rec.error = error.code
            try:
                self._send_error(error, rec, b"GET")
            except (h11.LocalProtocolError, StreamClosed):
                pass
            self.gw.record(rec)
            return
        self._send_error(error, rec, method or b"GET")

    def _send_error(self, error: GatewayError, rec: Record, method: bytes) -> None:
        body = error_body(error.status, error.code, error.message, rec.request_id)
        self.respond(error.status, JSON, body, rec, method, error.headers)
