"""Real backends on loopback for the integration tests (no mocked network).

``Backend`` is a stdlib ``ThreadingHTTPServer`` (an HTTP implementation
independent of h11) that records every request it receives, byte for byte,
and answers by path:

- ``/api/echo...``: 200 JSON of what arrived (method, target, headers, body, sha256)
- ``/api/status/<code>``: that status with a JSON body
- ``/api/bytes/<n>``: n bytes, Content-Length framed (``?chunked=1``: chunked)
- ``/api/slow/<seconds>``: answers after a delay
- ``/api/cookies``: two Set-Cookie headers
- ``/api/redirect?to=<location>``: 302 with that Location
- ``/api/early``: 401 at once without reading the request body
- ``/api/die/<n>``: declares Content-Length 2n, sends n bytes, then resets

Misbehaving servers (``hanging_server``, ``garbage_server``, ``blackhole``)
are raw sockets in threads.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Backend:
    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _read_chunked(rfile: Any) -> bytes:
    body = bytearray()
    while True:
        size_line = rfile.readline(65537)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += rfile.read(size)
        rfile.readline(3)


def make_handler(backend_ref: list[Backend], idle_close_s: float | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # head and body go in separate writes
        timeout = idle_close_s  # socket timeout: closes idle keep-alive connections

        def setup(self) -> None:
            super().setup()
            backend_ref[0].connections += 1

        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return _read_chunked(self.rfile)
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = (), ctype: str = "application/json") -> None:  # type: ignore[assignment]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in headers:
                self.send_header(k, v)
            if status not in (204, 304):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and status not in (204, 304):
                self.wfile.write(body)

        def handle_one(self) -> None:
            path = self.path.split("?", 1)[0]
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            if path == "/api/early":
                self.close_connection = True
                self._send(401, b'{"detail":"no"}')
                return
            body = self._body()
            backend_ref[0].seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
            if path.startswith("/api/status/"):
                code = int(path.rsplit("/", 1)[1])
                self._send(code, json.dumps({"status": code, "from": "backend"}).encode())
            elif path.startswith("/api/bytes/"):
                n = int(path.rsplit("/", 1)[1])
                block = bytes(range(256)) * 256
                if "chunked=1" in query:
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    sent = 0
                    while sent < n:
                        piece = block[: min(len(block), n - sent)]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        sent += len(piece)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(n))
                self.end_headers()
                if self.command == "HEAD":
                    return
                sent = 0
                while sent < n:
                    piece = block[: min(len(block), n - sent)]
                    self.wfile.write(piece)
                    sent += len(piece)
            elif path.startswith("/api/slow/"):
                time.sleep(float(path.rsplit("/", 1)[1]))
                self._send(200, b'{"slow":true}')
            elif path == "/api/redirect":
                target = query.split("to=", 1)[1] if "to=" in query else "/"
                self._send(302, b"{}", [("Location", target)])
            elif path == "/api/cookies":
                self._send(200, b"{}", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")])
            elif path.startswith("/api/die/"):
                n = int(path.rsplit("/", 1)[1])
                self.send_response(200)
                self.send_header("Content-Length", str(2 * n))
                self.end_headers()
                self.wfile.write(b"x" * n)
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
            else:
                payload = {
                    "method": self.command,
                    "target": self.path,
                    "headers": list(self.headers.items()),
                    "body_len": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                }
                self._send(200, json.dumps(payload).encode(), [("X-Backend", "echo")])

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_one

    return Handler


@contextmanager
def backend(idle_close_s: float | None = None) -> Iterator[Backend]:
    ref: list[Backend] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(ref, idle_close_s))
    server.daemon_threads = True
    ref.append(Backend(server))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield ref[0]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def raw_server(handler: Any) -> Iterator[int]:
    """A listening socket whose every connection goes to ``handler(conn)`` in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def accept_loop() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def hang(conn: socket.socket) -> None:
    """Reads the request, never answers."""
    _read_head(conn)
    time.sleep(30)


def garbage(conn: socket.socket) -> None:
    _read_head(conn)
    conn.sendall(b"this is not HTTP\r\n\r\n")
    time.sleep(0.5)
    conn.close()


def close_at_once(conn: socket.socket) -> None:
    _read_head(conn)
    conn.close()


@contextmanager
def blackhole() -> Iterator[int]:
    """A port whose SYNs are never answered: the accept queue is full and nobody accepts.

    Loopback-only stand-in for an unreachable host, to exercise the connect timeout.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the (tiny) backlog
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.05)
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        sock.close()


def free_port() -> int:
    """A port nothing listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)
