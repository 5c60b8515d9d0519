"""A backend for the benchmark that is never the bottleneck.

A raw ``asyncio.Protocol`` on uvloop: no framework, no task per request,
keep-alive (and pipelining) by default, every response framed by
``Content-Length``. It answers:

- ``GET /api/small``: a 56-byte JSON body;
- ``GET /api/bytes/<n>``: ``n`` bytes, written in 1 MiB chunks with
  backpressure (the transport's ``pause_writing``/``resume_writing``);
- ``POST /api/echo-len``: reads the request body (``Content-Length`` or
  chunked), answers its length as JSON, never keeping it in memory.

Anything else is 404. A request carrying a body (even a chunked, empty one,
as some proxies send on GET) is read to its end before the answer, so the
connection stays in step.

Run: ``python benchmarks/backend.py --port 9001`` (loopback only by default).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from typing import cast

SMALL_BODY = b'{"ok":true,"message":"hello from the benchmark backend"}'
CHUNK = b"x" * (1024 * 1024)
MAX_HEAD = 64 * 1024


def _head(status: bytes, length: int, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(length).encode() + (b"\r\nConnection: close" if close else b"")
        + b"\r\n\r\n"
    )


SMALL_RESPONSE = _head(b"200 OK", len(SMALL_BODY)) + SMALL_BODY
NOT_FOUND_BODY = b'{"error":"not_found"}'
NOT_FOUND = _head(b"404 Not Found", len(NOT_FOUND_BODY)) + NOT_FOUND_BODY
BAD_REQUEST = _head(b"400 Bad Request", 0, close=True)

# Parser states.
HEAD, BODY_LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILERS = range(6)


class BackendProtocol(asyncio.Protocol):
    __slots__ = (
        "body_len",
        "buf",
        "close_after",
        "closed",
        "method",
        "paused",
        "pending",
        "remaining",
        "state",
        "target",
        "transport",
    )

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = HEAD
        self.remaining = 0  # body bytes (or chunk bytes) still to read
        self.body_len = 0
        self.method = b""
        self.target = b""
        self.close_after = False
        self.paused = False  # the transport asked us to stop writing
        self.pending = 0  # bytes of a large body still to write
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP stream's transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        if self.state == HEAD and not self.buf and not self.pending:
            self.buf = bytearray(data)
        else:
            self.buf += data
        self._process()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._send_pending()
        if not self.pending:
            self._process()

    # --- parsing ------------------------------------------------------------
    def _process(self) -> None:
        buf = self.buf
        while not self.pending and not self.closed:
            state = self.state
            if state == HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._fail()
                    return
                if not self._parse_head(bytes(buf[:end])):
                    return
                del buf[: end + 4]
            elif state == BODY_LENGTH:
                take = min(self.remaining, len(buf))
                if take:
                    del buf[:take]
                    self.remaining -= take
                if self.remaining:
                    return
                self._respond()
            elif state == CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                try:
                    size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                except ValueError:
                    self._fail()
                    return
                del buf[: eol + 2]
                if size == 0:
                    self.state = TRAILERS
                else:
                    self.remaining = size
                    self.body_len += size
                    self.state = CHUNK_DATA
            elif state == CHUNK_DATA:
                take = min(self.remaining, len(buf))
                if take:
                    del buf[:take]
                    self.remaining -= take
                if self.remaining:
                    return
                self.state = CHUNK_CRLF
            elif state == CHUNK_CRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = CHUNK_SIZE
            else:  # TRAILERS: lines up to an empty one
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                del buf[: eol + 2]
                if eol == 0:
                    self._respond()

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self._fail()
            return False
        self.method, self.target, version = parts
        length = 0
        chunked = False
        close = version == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                value = value.strip().lower()
                if value == b"close":
                    close = True
                elif value == b"keep-alive":
                    close = False
        self.close_after = close
        self.body_len = 0
        if chunked:
            self.state = CHUNK_SIZE
        elif length:
            self.state = BODY_LENGTH
            self.remaining = length
            self.body_len = length
        else:
            self._respond()
        return True

    def _fail(self) -> None:
        self.transport.write(BAD_REQUEST)
        self.transport.close()
        self.closed = True

    # --- answering --------------------------------------------------------
    def _respond(self) -> None:
        self.state = HEAD
        method = self.method
        target = self.target.split(b"?", 1)[0]
        write = self.transport.write
        if target == b"/api/small" and method in (b"GET", b"HEAD"):
            write(SMALL_RESPONSE if method == b"GET" else SMALL_RESPONSE[: -len(SMALL_BODY)])
        elif target.startswith(b"/api/bytes/") and method in (b"GET", b"HEAD"):
            try:
                n = int(target[len(b"/api/bytes/"):])
            except ValueError:
                write(NOT_FOUND)
            else:
                write(_head(b"200 OK", n, b"application/octet-stream"))
                if method == b"GET":
                    self.pending = n
                    self._send_pending()
        elif target == b"/api/echo-len" and method == b"POST":
            body = b'{"length":%d}' % self.body_len
            write(_head(b"200 OK", len(body)) + body)
        else:
            write(NOT_FOUND)
        if self.close_after and not self.pending:
            self.transport.close()
            self.closed = True

    def _send_pending(self) -> None:
        write = self.transport.write
        while self.pending and not self.paused and not self.closed:
            n = min(self.pending, len(CHUNK))
            write(CHUNK if n == len(CHUNK) else CHUNK[:n])
            self.pending -= n
        if not self.pending and self.close_after and not self.closed:
            self.transport.close()
            self.closed = True


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BackendProtocol, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"backend listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
