"""Blocking clients for the integration tests: http.client and raw sockets."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any


def request(
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    timeout: float = 10,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        names = {k.lower() for k, _ in items}
        for k, v in items:
            conn.putheader(k, v)
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def get_json(port: int, target: str, **kw: Any) -> tuple[int, Any]:
    status, _, body = request(port, "GET", target, **kw)
    return status, json.loads(body)


def raw(port: int, data: bytes, timeout: float = 5, shut_write: bool = False) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        return read_all(s, timeout)


def read_all(s: socket.socket, timeout: float = 5) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse a stream of Content-Length-framed responses (for pipelining tests)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            hdrs[k.strip().lower().decode()] = v.strip().decode()
        n = int(hdrs.get("content-length", "0"))
        out.append((status, hdrs, rest[:n]))
        data = rest[n:]
    return out


def error_json(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert set(doc) == {"error", "message", "status", "request_id"}, doc
    return doc  # type: ignore[no-any-return]


def read_until_closed(s: socket.socket, timeout: float = 3) -> tuple[bytes, bool]:
    """Read until the peer closes; (data, closed). closed is False on timeout.

    A reset counts as closed: the connection is gone either way.
    """
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out, False
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk


def read_response(s: socket.socket, timeout: float = 3) -> tuple[int, dict[str, str], bytes]:
    """Read exactly one Content-Length-framed response from a raw socket."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _declared_length(data):
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a complete response: {data!r}")
        data += chunk
    [(status, headers, body)] = split_responses(data)
    return status, headers, body


def _declared_length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v.strip())
    return 0
