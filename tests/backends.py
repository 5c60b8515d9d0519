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

import collections
import hashlib
import json
import random
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
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

    @property
    def closed(self) -> int:
        """Connections the backend has closed so far (counted by its server)."""
        return int(getattr(self.server, "closed", 0))


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

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = (), ctype: str = "application/json") -> None:
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
                time.sleep(float(path.rsplit("/", 1)[1]))  # behaviour: a slow backend
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


class _QuietServer(ThreadingHTTPServer):
    """Tests cut connections on purpose (timeouts, resets): no tracebacks for those."""

    # socketserver's default backlog is 5: fifty pooled connections opened at
    # once overflow it, and SYN retransmits (1 s, 3 s, ...) outlast a test's timeout.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, ValueError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Count each connection once it is closed (idle timeout included), for tests to wait on."""
        super().shutdown_request(request)
        with self.closed_lock:
            self.closed += 1

    closed = 0
    closed_lock = threading.Lock()


class _QuietServer6(_QuietServer):
    address_family = socket.AF_INET6


@contextmanager
def backend(idle_close_s: float | None = None, host: str = "127.0.0.1") -> Iterator[Backend]:
    """A recording HTTP/1.1 backend on ``host`` (``"::1"`` for IPv6 loopback), port 0."""
    ref: list[Backend] = []
    server_class = _QuietServer6 if ":" in host else _QuietServer
    server = server_class((host, 0), make_handler(ref, idle_close_s))
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
    time.sleep(30)  # behaviour: a backend that never answers


def garbage(conn: socket.socket) -> None:
    _read_head(conn)
    conn.sendall(b"this is not HTTP\r\n\r\n")
    time.sleep(0.5)  # behaviour: stay open, so the gateway judges the bytes, not an EOF
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
    # the accept queue is full once a filler's handshake has completed
    _, connected, _ = select.select([], fillers, [], 5)
    assert connected, "no filler connection completed"
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        sock.close()


def free_port() -> int:
    """A loopback port nothing listens on (connection refused) - the one copy for all tests."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


# --- raw HTTP/1.1 servers for the hardening tests ------------------------------------
# Strict on purpose: whatever the gateway sends upstream is parsed to the letter of
# RFC 9112 (CRLF only, one framing header, token names, visible values), so an
# ambiguous or sloppy upstream request shows up as ``malformed`` instead of being
# silently "fixed" the way a lenient server would.


_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e\x80-\xff]+) HTTP/1\.1\Z")
# Values: anything but CR, LF and NUL (checked per line), which RFC 9110 5.5 calls
# dangerous; other CTLs "MAY" be retained by a recipient, so h11 keeps them.
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*\Z")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?\Z")
_BLOCK = bytes(range(256)) * 4096  # 1 MiB of a known pattern


class Malformed(Exception):
    """The peer sent bytes that are not a well-formed HTTP/1.1 message."""


class Truncated(Exception):
    """The peer closed in the middle of a message."""


class RawConn:
    """Buffered, blocking reads on one accepted socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_until(self, sep: bytes, limit: int) -> bytes | None:
        """Bytes up to ``sep`` (consumed, not returned); None at a clean EOF before any byte."""
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise Malformed(f"no {sep!r} within {limit} bytes")
            start = max(0, len(self.buf) - len(sep) + 1)
            if not self._fill():
                if self.buf:
                    raise Truncated(bytes(self.buf[:200]))
                return None

    def read_exact(self, n: int, keep: bool = True) -> bytes:
        """n bytes (returned when ``keep``; else only counted, for huge bodies)."""
        out = bytearray()
        while n:
            if not self.buf and not self._fill():
                raise Truncated(f"{n} body bytes missing")
            take = min(n, len(self.buf))
            if keep:
                out += self.buf[:take]
            del self.buf[:take]
            n -= take
        return bytes(out)


@dataclass
class RawRequest:
    head: bytes  # request line and field lines as received, CRLF-joined, no blank line
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    framing: str = "none"  # "none", "length" or "chunked"
    body: bytes = b""
    body_len: int = 0
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def read_request_head(rc: RawConn, limit: int = 1 << 20) -> RawRequest | None:
    """One request head, strictly parsed; None when the peer closed between requests."""
    head = rc.read_until(b"\r\n\r\n", limit)
    if head is None:
        return None
    lines = head.split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            raise Malformed(f"bare CR/LF or NUL in {line!r}")
    m = _REQUEST_LINE.match(lines[0])
    if m is None:
        raise Malformed(f"request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        fm = _FIELD_LINE.match(line)
        if fm is None:
            raise Malformed(f"field line {line!r}")
        headers.append((fm.group(1), fm.group(2)))
    req = RawRequest(head, m.group(1), m.group(2), headers)
    te = req.all(b"transfer-encoding")
    cl = req.all(b"content-length")
    if te and cl:
        raise Malformed("both Transfer-Encoding and Content-Length")
    if len(te) > 1 or (te and te[0].lower() != b"chunked"):
        raise Malformed(f"Transfer-Encoding {te!r}")
    if len(cl) > 1 or (cl and not cl[0].isdigit()):
        raise Malformed(f"Content-Length {cl!r}")
    if len([v for k, v in headers if k.lower() == b"host"]) != 1:
        raise Malformed("not exactly one Host")
    req.framing = "chunked" if te else "length" if cl else "none"
    return req


def read_request_body(rc: RawConn, req: RawRequest, keep: bool = True) -> None:
    if req.framing == "length":
        n = int(req.all(b"content-length")[0])
        req.body = rc.read_exact(n, keep)
        req.body_len = n
    elif req.framing == "chunked":
        body = bytearray()
        while True:
            line = rc.read_until(b"\r\n", 4096)
            if line is None:
                raise Truncated("EOF before a chunk size")
            m = _CHUNK_SIZE.match(line)
            if m is None:
                raise Malformed(f"chunk size line {line!r}")
            size = int(m.group(1), 16)
            req.chunk_sizes.append(size)
            if size == 0:
                break
            data = rc.read_exact(size, keep)
            if keep:
                body += data
            req.body_len += size
            if rc.read_exact(2) != b"\r\n":
                raise Malformed("chunk data not followed by CRLF")
        while True:
            line = rc.read_until(b"\r\n", 65536)
            if line is None:
                raise Truncated("EOF in trailers")
            if line == b"":
                break
            fm = _FIELD_LINE.match(line)
            if fm is None:
                raise Malformed(f"trailer line {line!r}")
            req.trailers.append((fm.group(1), fm.group(2)))
        req.body = bytes(body)


def http_response(status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] = (), head: bool = False) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, b"OK" if status == 200 else b"X")]
    lines += [k + b": " + v for k, v in headers]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


class RawServer:
    """A threaded raw-socket server on 127.0.0.1: ``handler(RawConn, server)`` per connection.

    ``stop()`` shuts every open connection down, as a dying process would, so a
    server started again on the same ``port`` is a real restart.
    """

    def __init__(self, handler: Any, port: int = 0) -> None:
        self.handler = handler
        self.requested_port = port
        self.port = 0
        self.connections = 0
        self.lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.requested_port))
        sock.listen(1024)
        sock.settimeout(0.05)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(RawConn(conn), self)
        except (OSError, Malformed, Truncated):
            pass
        finally:
            with self.lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        with self.lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def running(server: RawServer) -> Iterator[RawServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Recorder:
    """What a strict raw backend received: complete requests, malformed and truncated ones."""

    requests: list[RawRequest] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    server: RawServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def clear(self) -> None:
        self.requests.clear()
        self.malformed.clear()
        self.truncated.clear()


@contextmanager
def recorder() -> Iterator[Recorder]:
    """A keep-alive backend that records every request exactly as it arrived and
    answers ``200`` with body ``got <n>`` (n: body bytes received; none for HEAD).
    A malformed request is recorded and its connection closed."""
    rec = Recorder()

    def handler(rc: RawConn, server: RawServer) -> None:
        while True:
            try:
                req = read_request_head(rc)
                if req is None:
                    return
                read_request_body(rc, req)
            except Malformed as exc:
                rec.malformed.append(str(exc))
                return
            except Truncated as exc:
                rec.truncated.append(str(exc))
                return
            rec.requests.append(req)
            rc.sock.sendall(http_response(200, b"got %d" % len(req.body), [(b"Content-Type", b"text/plain")],
                                          head=req.method == b"HEAD"))

    rec.server = RawServer(handler)
    with running(rec.server):
        yield rec


EVIL = b"HTTP/1.1 200 OK\r\nX-Tag: evil\r\nContent-Length: 10\r\n\r\nq=evil;h=e"
SMUGGLED = b"GET /api/tag?t=evil HTTP/1.1\r\nHost: evil\r\nX-Tag: evil\r\n\r\n"


def tag_handler(rc: RawConn, server: RawServer) -> None:
    """A keep-alive backend that echoes a tag, with misbehaving routes on the same origin.

    - ``/api/tag?t=<q>`` (header ``X-Tag: <h>``): 200, ``X-Tag: <h>``, body ``q=<q>;h=<h>``
    - ``/api/extra``: a complete response, then a whole second (``evil``) response
    - ``/api/delayed-extra``: the same, the extra response 100 ms later
    - ``/api/both``: ``Content-Length`` and ``Transfer-Encoding: chunked``, then ``evil``
    - ``/api/two-lengths``: two different ``Content-Length`` headers, then ``evil``
    - ``/api/short``: ``Content-Length: 2`` followed by more bytes than declared
    - ``/api/nobody/<status>`` (e.g. 204, 304, or any status to a HEAD): a body where none is allowed
    - ``/api/early``: 401 at once, without reading the request body, and the connection
      kept open: the unread body is parsed as the next request (a "CL.0" backend)
    """
    while True:
        req = read_request_head(rc)
        if req is None:
            return
        path, _, query = req.target.partition(b"?")
        if path == b"/api/early":
            rc.sock.sendall(http_response(401, b"no"))
            continue  # body left unread on purpose
        read_request_body(rc, req)
        if path == b"/api/tag":
            q = query.partition(b"t=")[2]
            h = req.header(b"x-tag") or b""
            rc.sock.sendall(http_response(200, b"q=%s;h=%s" % (q, h), [(b"X-Tag", h)], head=req.method == b"HEAD"))
        elif path == b"/api/extra":
            rc.sock.sendall(http_response(200, b"ok") + EVIL)
        elif path == b"/api/delayed-extra":
            rc.sock.sendall(http_response(200, b"ok"))
            time.sleep(0.1)  # behaviour: the extra response comes once the connection is idle
            rc.sock.sendall(EVIL)
            with server.lock:
                server.extras_sent = getattr(server, "extras_sent", 0) + 1
        elif path == b"/api/both":
            rc.sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\n\r\n" + EVIL
            )
        elif path == b"/api/two-lengths":
            rc.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\nok" + EVIL)
        elif path == b"/api/short":
            rc.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEVIL-NOT-HTTP\r\n\r\n" + EVIL)
        elif path.startswith(b"/api/nobody/"):
            status = int(path.rsplit(b"/", 1)[1])
            rc.sock.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(EVIL), EVIL))
        else:
            rc.sock.sendall(http_response(404, b"no route"))


def fast_handler(rc: RawConn, server: RawServer) -> None:
    """A fast keep-alive backend for big bodies (counts, never stores):

    - ``GET /api/bytes/<n>``: n bytes, Content-Length framed, from a 1 MiB block
    - ``POST /api/upload``: reads the body (any framing), answers ``received <n>``
    Completed uploads are appended to ``server.uploads`` (their sizes).
    """
    while True:
        req = read_request_head(rc)
        if req is None:
            return
        path = req.target.partition(b"?")[0]
        if path.startswith(b"/api/bytes/"):
            n = int(path.rsplit(b"/", 1)[1])
            read_request_body(rc, req, keep=False)
            rc.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % n)
            view = memoryview(_BLOCK)
            while n:
                take = min(n, len(view))
                rc.sock.sendall(view[:take])
                n -= take
        else:
            read_request_body(rc, req, keep=False)
            with server.lock:
                server.uploads.append(req.body_len)
            rc.sock.sendall(http_response(200, b"received %d" % req.body_len))


def fast_backend() -> RawServer:
    server = RawServer(fast_handler)
    server.uploads = []
    return server


def restartable_handler(rc: RawConn, server: RawServer) -> None:
    """Keep-alive echo of the request line's target; ``server.generation`` in ``X-Generation``."""
    while True:
        req = read_request_head(rc)
        if req is None:
            return
        read_request_body(rc, req)
        gen = getattr(server, "generation", 0)
        rc.sock.sendall(http_response(200, req.target, [(b"X-Generation", b"%d" % gen)]))


def flaky_keepalive_handler(
    seed: int, processed: collections.Counter[bytes] | None = None, echo: bool = False
) -> Callable[[RawConn, RawServer], None]:
    """A keep-alive backend that drops its connections at random moments: after 1 to 3
    answered requests it either closes at once, closes after a short pause, or waits
    for the next request and closes without a byte of answer. Never sends
    ``Connection: close``. ``server.answered`` counts the answers; ``processed``, when
    given, counts every request answered by target. The answer is the target (with
    ``echo``: the target, a space and the body)."""
    rng = random.Random(seed)
    rng_lock = threading.Lock()

    def handler(rc: RawConn, server: RawServer) -> None:
        with rng_lock:
            budget = rng.randint(1, 3)
            how = rng.choice(["now", "pause", "on_next"])
            pause = rng.uniform(0.0, 0.02)
        for _ in range(budget):
            req = read_request_head(rc)
            if req is None:
                return
            read_request_body(rc, req)
            with server.lock:
                server.answered = getattr(server, "answered", 0) + 1
                if processed is not None:
                    processed[req.target] += 1
            rc.sock.sendall(http_response(200, req.target + b" " + req.body if echo else req.target))
        if how == "pause":
            time.sleep(pause)  # behaviour: the backend keeps the connection a while before closing
        elif how == "on_next":
            rc.read_until(b"\r\n\r\n", 1 << 20)
        # returning closes the socket (FIN; RST when a request was left unread)

    return handler
