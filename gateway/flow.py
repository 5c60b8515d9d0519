"""An asyncio Protocol that feeds one h11 connection, with flow control both ways.

The base of both sides: ``protocol.ClientConnection`` (h11 SERVER) and
``upstream.UpstreamConnection`` (h11 CLIENT). As in uvicorn's
``flow_control.py``: reading pauses while more than ``HIGH_WATER`` bytes wait
to be parsed, writing waits for ``resume_writing`` (``drain``), and
``connection_lost`` wakes every waiter so nobody hangs on a dead socket.
Bytes are handed to h11 only when it asks (``NEED_DATA``), so memory per
connection is bounded by ``HIGH_WATER`` plus one read, whatever the body size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11

HIGH_WATER = 256 * 1024


class StreamClosed(Exception):
    """The peer went away (reset, or closed before we were done)."""


class H11Protocol(asyncio.Protocol):
    def __init__(self, conn: h11.Connection) -> None:
        self.h11 = conn
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made, before any use
        self.closed = False  # connection_lost was called
        self.eof = False  # the peer half-closed (or closed)
        self.bytes_received = 0
        self.high_water = HIGH_WATER  # a client connection lowers it by what it may hold of a body
        self._buffer = bytearray()  # received, not yet fed to h11
        self._fed_eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.on_resume_writing: Callable[[], None] | None = None  # a relay reading into us

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream protocol gets a Transport

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self._buffer += data
        if len(self._buffer) >= self.high_water and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True  # keep the write side open: a half-closed peer still gets its answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.on_resume_writing is not None:
            self.on_resume_writing()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- reading ----------------------------------------------------------
    def _wake_reader(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def next_event(self) -> Any:
        """The next h11 event without waiting: an event, ``NEED_DATA`` or ``PAUSED``.

        Raises h11.RemoteProtocolError on bad input from the peer.
        """
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._buffer:
                conn.receive_data(self._buffer)  # type: ignore[arg-type]  # any buffer: h11 copies it into its own
                self._buffer.clear()
                if self._reading_paused and not self.closed:
                    self._reading_paused = False
                    self.transport.resume_reading()
            elif self.eof and not self._fed_eof:
                self._fed_eof = True
                conn.receive_data(b"")
            else:
                return event

    async def wait_for_data(self, deadline: float | None = None) -> None:
        """Return when more bytes (or EOF) arrived; TimeoutError at ``deadline`` (loop time).

        A timer only when we really wait, and no task cancellation: cheaper
        than ``asyncio.timeout()`` around calls that mostly don't block.
        """
        if self._buffer or (self.eof and not self._fed_eof):
            return
        if self._fed_eof:
            raise StreamClosed("peer closed the connection")
        self._data_waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await _wait(waiter, deadline)
        finally:
            self._data_waiter = None

    async def receive_event(self, deadline: float | None = None) -> Any:
        while True:
            event = self.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self.wait_for_data(deadline)

    def discard_input(self) -> None:
        """Drop what was received and not parsed (lingering close)."""
        self._buffer.clear()
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    @property
    def has_buffered_data(self) -> bool:
        return bool(self._buffer)

    # --- writing ----------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            raise StreamClosed("connection closed")
        self.transport.write(data)

    async def drain(self, deadline: float | None = None) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if self.closed:
            raise StreamClosed("connection closed")
        if not self._writing_paused:
            return
        self._drain_waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await _wait(waiter, deadline)
        finally:
            self._drain_waiter = None
        if self.closed:
            raise StreamClosed("connection closed")

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _wait(waiter: asyncio.Future[None], deadline: float | None) -> None:
    if deadline is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_at(deadline, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
