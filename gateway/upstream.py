"""One persistent HTTP/1.1 connection to a backend: the h11 CLIENT side.

States as in httpcore's ``_async/http11.py``: NEW (connecting), ACTIVE (one
request in flight), IDLE (in the pool), CLOSED. A connection is reused only
when both h11 sides are DONE; an idle one that got bytes or EOF from the
backend, or that sat longer than the pool's idle expiry, is never reused.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Callable
from typing import Any, Protocol

import h11

from gateway import h11fast
from gateway.errors import ReadTimeout, UpstreamClosed, UpstreamProtocolError
from gateway.flow import HIGH_WATER, H11Protocol, StreamClosed, _wait

MAX_RESPONSE_HEAD_BYTES = 64 * 1024
# Where h11 ends a head (``h11._receivebuffer.blank_line_regex``).
_HEAD_END = re.compile(b"\n\r?\n")


class Sink(Protocol):
    """Where ``relay_body`` writes a response body: the client connection
    (``protocol.ClientConnection``, through ``upload.Downstream``)."""

    transport: asyncio.Transport
    closed: bool
    _writing_paused: bool  # its transport's buffer is full (flow.H11Protocol.pause_writing)
    on_resume_writing: Callable[[], None] | None  # called when its transport drains

    async def drain(self, deadline: float | None = None) -> None: ...


class ConnState(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    IDLE = "idle"
    CLOSED = "closed"


class UpstreamConnection(H11Protocol):
    def __init__(self, origin: str, on_idle_close: Callable[[UpstreamConnection], None]) -> None:
        super().__init__(h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES))
        self.origin = origin
        self.on_idle_close = on_idle_close  # the backend closed it while it sat in the pool
        self.state = ConnState.NEW
        self.idle_since = 0.0
        self.requests = 0  # requests sent on this connection
        self.reusable = True  # cleared on ambiguous framing from the backend
        # Relaying a Content-Length body straight to a client (relay_body).
        self._sink: Sink | None = None
        self._body_left = 0  # body bytes still due from the backend
        self._last_progress = 0.0  # loop time of the last body bytes
        self._sink_paused = False  # we paused reading: the client's buffer is full
        self._loop_time: Any = None
        self.relayed = 0

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.origin} {self.state.value} requests={self.requests}>"

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        previous, self.state = self.state, ConnState.CLOSED
        if previous is ConnState.IDLE:
            self.on_idle_close(self)

    def data_received(self, data: bytes) -> None:
        left = self._body_left
        if not left:
            super().data_received(data)
            return
        # relay_body: body bytes go straight to the client's transport (no
        # buffer, no h11 event, no copy); anything past the body is kept,
        # so the connection will not be reused (can_return_to_pool).
        if len(data) > left:
            super().data_received(data[left:])
            data = data[:left]
        n = len(data)
        self.bytes_received += n
        self._body_left = left = left - n
        self._last_progress = self._loop_time()
        sink = self._sink
        assert sink is not None
        if not sink.closed:
            sink.transport.write(data)
        if sink._writing_paused and not self._sink_paused:
            self._sink_paused = True
            self.transport.pause_reading()
            self._wake_reader()
        elif not left or sink.closed:
            self._wake_reader()

    async def relay_body(self, sink: Sink, length: int, timeout_s: float) -> int:
        """Relay the next ``length`` bytes from the socket to ``sink`` as they
        arrive, with both sides' flow control; then h11 records the end of the
        Content-Length body it has counted on. Returns the bytes relayed (also
        when it raises: see ``relayed``). TimeoutError when the client takes
        nothing for ``timeout_s``, ReadTimeout when the backend sends nothing."""
        loop = asyncio.get_running_loop()
        self._loop_time = loop.time
        self._sink = sink
        sink.on_resume_writing = self._sink_resumed
        self._body_left = length
        self._last_progress = loop.time()
        self.relayed = 0
        try:
            if sink._writing_paused:
                self._sink_paused = True
                self.transport.pause_reading()
            while self._body_left:
                if sink.closed:
                    raise StreamClosed("client connection closed")
                if self._sink_paused:
                    await sink.drain(loop.time() + timeout_s)
                    self._sink_resumed()  # (already done when resume_writing called it)
                    continue
                if self.eof:
                    raise UpstreamClosed("upstream closed mid-response")
                self._data_waiter = waiter = loop.create_future()
                try:
                    await _wait(waiter, self._last_progress + timeout_s)
                except TimeoutError:
                    if loop.time() - self._last_progress < timeout_s:
                        continue  # bytes came meanwhile: wait again from the last ones
                    raise ReadTimeout(f"upstream sent no body data for {timeout_s:g}s") from None
                finally:
                    self._data_waiter = None
        finally:
            self.relayed = length - self._body_left
            sink.on_resume_writing = None
            self._sink = None
            self._body_left = 0
            if self._sink_paused:
                self._sink_paused = False
                if not self.closed:
                    self.transport.resume_reading()
        h11fast.end_received_body(self.h11)
        return length

    def _sink_resumed(self) -> None:
        """The client's transport took its buffer: read the backend again at once,
        from ``resume_writing``, not a loop iteration later in relay_body."""
        if self._sink_paused:
            self._sink_paused = False
            if not self.closed:
                self.transport.resume_reading()
            self._last_progress = self._loop_time()

    @property
    def reused(self) -> bool:
        return self.requests > 1

    def usable_after_idle(self, now: float, idle_timeout_s: float) -> bool:
        """httpcore's ``has_expired()``: past the idle expiry, or readable while idle."""
        return (
            not self.closed
            and not self.eof
            and not self.has_buffered_data
            and now - self.idle_since < idle_timeout_s
        )

    def can_return_to_pool(self) -> bool:
        conn = self.h11
        return (
            self.reusable
            and not self.closed
            and not self.eof
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            # Bytes past the end of the response would be read as the next
            # client's response: a desync, so the connection is not reused.
            and not self.has_buffered_data
            and not conn.trailing_data[0]
        )

    def send_head(self, request: h11.Request, *, end: bool, body: bytes = b"") -> None:
        """Write the request head; ``end``: the request has no body (one write for
        both); ``body``: bytes that follow the head in the same write (not framed)."""
        self.requests += 1
        self.bytes_received = 0
        try:
            head = h11fast.request_head(self.h11, request, end=end)
            if body:
                if self.closed:
                    raise StreamClosed("connection closed")
                self.transport.writelines((head, body))  # one send, no copy
            else:
                self.write(head)
        except StreamClosed:
            raise UpstreamClosed("upstream connection closed before the request was sent") from None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            raise self._response_error(exc) from None

    def _response_error(self, exc: h11.RemoteProtocolError) -> UpstreamClosed | UpstreamProtocolError:
        """h11 reports a close where a response was due as a protocol error; for
        us it is the backend going away (and, when no byte came back, a
        candidate for a resend). Anything else is an invalid response (502)."""
        if self.eof:
            return UpstreamClosed(
                "upstream closed the connection before responding"
                if self.bytes_received == 0
                else "upstream closed the connection mid-response"
            )
        return UpstreamProtocolError(f"invalid response from upstream: {exc}")

    def _next_head_event(self) -> Any:
        """Like next_event, but h11 gets the bytes of one head only: what
        follows stays in our buffer, so a Content-Length body can be relayed
        without going through h11 (relay_body). h11 is asked only when a whole
        head (or an error for it to report) is there: its buffer is empty
        between heads, so without one it could only say NEED_DATA."""
        buf = self._buffer
        while buf:
            match = _HEAD_END.search(buf)
            if match is not None and buf[:1] != b"\n" and buf[:2] != b"\r\n":
                end = match.end()
            elif match is not None or self.eof or len(buf) > MAX_RESPONSE_HEAD_BYTES:
                end = len(buf)  # h11 decides (an error, or its size limit)
            else:
                return h11.NEED_DATA  # the head is not complete yet
            self.h11.receive_data(buf[:end])  # type: ignore[arg-type]  # any buffer: h11 copies it
            del buf[:end]
            self._maybe_resume()
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
        return self.next_event() if self.eof else h11.NEED_DATA  # h11 gets the EOF

    async def _wait_for_more(self, deadline: float) -> None:
        """Wait for bytes beyond those buffered (a head still incomplete stays
        in our buffer, so ``wait_for_data`` would return at once), or EOF."""
        if self.eof:
            return
        self._data_waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await _wait(waiter, deadline)
        finally:
            self._data_waiter = None

    def _maybe_resume(self) -> None:
        if self._reading_paused and not self.closed and len(self._buffer) < HIGH_WATER:
            self._reading_paused = False
            self.transport.resume_reading()

    def take_body(self, length: int) -> bytes:
        """Up to ``length`` body bytes from what arrived with (or after) the head."""
        buf = self._buffer
        data = bytes(buf[:length]) if len(buf) > length else bytes(buf)
        del buf[: len(data)]
        self._maybe_resume()
        return data

    async def receive_response(self, deadline: float) -> h11.Response:
        """The final response head, skipping 1xx (100 Continue, 103 Early Hints)."""
        while True:
            try:
                event = self._next_head_event()
                while event is h11.NEED_DATA:
                    await self._wait_for_more(deadline)
                    event = self._next_head_event()
            except h11.RemoteProtocolError as exc:
                raise self._response_error(exc) from None
            except StreamClosed:
                raise UpstreamClosed("upstream closed the connection before responding") from None
            if type(event) is h11.Response:
                return event
            if type(event) is h11.InformationalResponse:
                if event.status_code == 101:
                    raise UpstreamProtocolError("upstream switched protocols; upgrades are not supported")
                continue
            if type(event) is h11.ConnectionClosed:
                raise UpstreamClosed(
                    "upstream closed the connection before responding"
                    if self.bytes_received == 0
                    else "upstream closed the connection mid-response"
                )
            raise UpstreamProtocolError(f"unexpected upstream event {type(event).__name__}")
