"""A small HTTP/1.1 client for the gateway's own requests: ``gateway check`` and the OpenAPI fetch.

h11 CLIENT over asyncio streams: connect, send one request, read the whole
response (bounded), each step under its own timeout (httpcore's per-operation
timeouts). Not the proxy's hot path: that is ``upstream.py``, with flow
control and no buffering.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11

from gateway.config import authority

READ_SIZE = 65536


class IncompleteResponse(OSError):
    """The server closed the connection before a complete response."""

    def __init__(self, message: str, *, head_received: bool) -> None:
        super().__init__(message)
        self.head_received = head_received


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class H11Client:
    """One connection: ``await H11Client.connect(...)``, ``request()``, then ``close()``."""

    def __init__(self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.host = host
        self.port = port
        self.h11 = h11.Connection(h11.CLIENT)
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, timeout_s: float | None = None) -> H11Client:
        """Open the connection (TimeoutError past ``timeout_s``, OSError when refused or unresolved)."""
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
        return cls(host, port, reader, writer)

    async def request(
        self,
        method: str,
        target: str | bytes,
        headers: list[tuple[str, str]],
        *,
        timeout_s: float | None = None,
        max_body_bytes: int | None = None,
    ) -> Response:
        """Send a request without a body (``Host`` added) and read the whole response.

        TimeoutError past ``timeout_s``; IncompleteResponse when the server
        closes early; OSError past ``max_body_bytes``; h11.ProtocolError on a
        malformed response.
        """
        conn = self.h11
        head = h11.Request(method=method, target=target, headers=[("Host", authority(self.host, self.port)), *headers])
        self._writer.write(conn.send(head) + conn.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        body = bytearray()
        eof = False
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    if not eof:
                        raise
                    event = h11.ConnectionClosed()  # h11's word for a close where a response was due
                if event is h11.NEED_DATA:
                    data = await self._reader.read(READ_SIZE)
                    eof = not data
                    conn.receive_data(data)
                elif type(event) is h11.Response:
                    response = event
                elif type(event) is h11.Data:
                    body += event.data
                    if max_body_bytes is not None and len(body) > max_body_bytes:
                        raise OSError(f"response body over {max_body_bytes} bytes")
                elif type(event) is h11.EndOfMessage:
                    assert response is not None
                    return Response(response.status_code, list(response.headers), bytes(body))
                elif type(event) is h11.ConnectionClosed:
                    raise IncompleteResponse(
                        "connection closed before a complete response", head_received=response is not None
                    )

    @property
    def keep_alive(self) -> bool:
        """Both sides are done and neither asked to close: the connection could carry another request."""
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def read_idle(self) -> bytes:
        """Wait on the idle connection: b"" once the server closes it, else the bytes it sent."""
        return await self._reader.read(1)

    def close(self) -> None:
        self._writer.close()
