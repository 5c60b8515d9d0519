"""One persistent HTTP/1.1 connection to a backend: the h11 CLIENT side.

States as in httpcore's ``_async/http11.py``: NEW (connecting), ACTIVE (one
request in flight), IDLE (in the pool), CLOSED. A connection is reused only
when both h11 sides are DONE; an idle one that got bytes or EOF from the
backend, or that sat longer than the pool's idle expiry, is never reused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import h11

from gateway.errors import UpstreamClosed, UpstreamProtocolError
from gateway.flow import H11Protocol, StreamClosed

MAX_RESPONSE_HEAD_BYTES = 64 * 1024


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

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.origin} {self.state.value} requests={self.requests}>"

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        previous, self.state = self.state, ConnState.CLOSED
        if previous is ConnState.IDLE:
            self.on_idle_close(self)

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

    def send_head(self, request: h11.Request, *, end: bool) -> None:
        """Write the request head; ``end``: the request has no body (one write for both)."""
        self.requests += 1
        self.bytes_received = 0
        try:
            data = self.h11.send(request)
            if end:
                data += self.h11.send(h11.EndOfMessage())
            self.write(data)
        except StreamClosed:
            raise UpstreamClosed("upstream connection closed before the request was sent") from None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            if self.eof:
                # h11 reports a close where a response was due as a protocol
                # error; for us it is the backend going away (and, when no byte
                # came back, a candidate for a retry).
                raise UpstreamClosed(
                    "upstream closed the connection before responding"
                    if self.bytes_received == 0
                    else "upstream closed the connection mid-response"
                ) from None
            raise UpstreamProtocolError(f"invalid response from upstream: {exc}") from None

    async def receive_response(self, deadline: float) -> h11.Response:
        """The final response head, skipping 1xx (100 Continue, 103 Early Hints)."""
        while True:
            try:
                event = await self.receive_event(deadline)
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
