"""Blocking clients for the integration tests: http.client and raw sockets."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.backends import free_port


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
    return doc


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


# --- hardening helpers: strict response parsing, RSS, a subprocess gateway ------------

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*\Z")
_RESP_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\Z")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:;[^\r\n]*)?\Z")


class IncompleteResponse(Exception):
    pass


def parse_one_response(data: bytes, head_request: bool = False) -> tuple[int, list[tuple[bytes, bytes]], bytes, bytes]:
    """Strictly parse one HTTP/1.1 response at the start of ``data``: (status, headers, body, rest).

    Raises AssertionError when the bytes are not a well-formed response and
    IncompleteResponse when they end before the response does.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise IncompleteResponse(data[:200])
    lines = data[:end].split(b"\r\n")
    m = _STATUS_LINE.match(lines[0])
    assert m, f"bad status line {lines[0]!r}"
    status = int(m.group(1))
    headers = []
    for line in lines[1:]:
        fm = _RESP_FIELD.match(line)
        assert fm, f"bad response field line {line!r}"
        headers.append((fm.group(1), fm.group(2)))
    rest = data[end + 4 :]
    names = [k.lower() for k, _ in headers]
    te = [v for k, v in headers if k.lower() == b"transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == b"content-length"]
    assert not (te and cl), f"response with both Content-Length and Transfer-Encoding: {headers}"
    assert names.count(b"content-length") <= 1, headers
    if status < 200 or status in (204, 304) or head_request:
        assert status >= 200 or not cl, headers
        return status, headers, b"", rest
    if te:
        assert te == [b"chunked"], te
        body = bytearray()
        while True:
            i = rest.find(b"\r\n")
            if i < 0:
                raise IncompleteResponse(b"chunk size")
            cm = _CHUNK_LINE.match(rest[:i])
            assert cm, f"bad chunk size line {rest[:i]!r}"
            size = int(cm.group(1), 16)
            rest = rest[i + 2 :]
            if size == 0:
                while True:
                    j = rest.find(b"\r\n")
                    if j < 0:
                        raise IncompleteResponse(b"trailers")
                    line, rest = rest[:j], rest[j + 2 :]
                    if not line:
                        return status, headers, bytes(body), rest
                    assert _RESP_FIELD.match(line), f"bad trailer {line!r}"
            if len(rest) < size + 2:
                raise IncompleteResponse(b"chunk data")
            body += rest[:size]
            assert rest[size : size + 2] == b"\r\n", "chunk not followed by CRLF"
            rest = rest[size + 2 :]
    assert cl, f"a response without framing from the gateway (close-delimited?): {headers}"
    assert cl[0].isdigit(), cl
    n = int(cl[0])
    if len(rest) < n:
        raise IncompleteResponse(b"body")
    return status, headers, rest[:n], rest[n:]


def parse_responses_strict(data: bytes, head_request: bool = False) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
    """Every byte must belong to a complete, well-formed response (1xx included)."""
    out = []
    while data:
        status, headers, body, data = parse_one_response(data, head_request)
        out.append((status, headers, body))
    return out


def raise_nofile_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit toward ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory line in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class RssWatch:
    """Peak RSS of a process over a block, relative to a baseline taken at the start.

    Samples VmRSS every 10 ms in a thread and, where the kernel allows it,
    resets VmHWM at the start (``clear_refs`` 5) so the kernel's own peak counts too.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline_kib = 0
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm_reset = False

    def __enter__(self) -> RssWatch:
        self.baseline_kib = proc_status_kib(self.pid, "VmRSS")
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            pass
        self.peak_kib = self.baseline_kib
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            self._stop.wait(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._hwm_reset:
            try:
                self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmHWM"))
            except (OSError, KeyError):
                pass

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"level": "error", "event": "non-JSON output", "line": line[:300].decode("latin-1")})
        return out


@contextmanager
def gateway_subprocess(soft_nofile: int | None = None, **env: str) -> Iterator[GatewayProcess]:
    """``python -m gateway`` on a free loopback port, output to a file (a pipe that
    nobody reads could fill up and stall the gateway). On exit: SIGTERM, then the
    log must hold no error-level line and stderr no traceback. ``soft_nofile``: start
    it with that open-file soft limit."""
    root = Path(__file__).resolve().parents[2]
    port = free_port()
    full_env = {
        **os.environ,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_SERVICES": "service1",
        **env,
    }
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "gateway.log"
        err_path = Path(tmp) / "gateway.err"
        with open(log_path, "wb") as out, open(err_path, "wb") as err:
            def lower_nofile() -> None:
                if soft_nofile is not None:
                    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, hard))

            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway"], cwd=root, env=full_env, stdout=out, stderr=err,
                preexec_fn=lower_nofile if soft_nofile is not None else None,
            )
        gp = GatewayProcess(proc, port, log_path)
        try:
            wait_listening(proc, port, err_path.read_text)
            yield gp
            proc.terminate()
            proc.wait(20)
            stderr = err_path.read_text()
            assert "Traceback" not in stderr, stderr
            errors = [r for r in gp.log_records() if r.get("level") == "error"]
            assert not errors, errors
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, output: Callable[[], str], timeout: float = 15
) -> None:
    """Wait until ``proc`` accepts connections on ``port``; fail with its ``output()`` if it exits."""

    def listening() -> bool:
        assert proc.poll() is None, output()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    assert wait_for(listening, timeout), "the gateway did not start listening"


SENTINEL_TARGET = "/api/service1/sentinel"


def sentinel_request(port: int) -> None:
    """A positive event for a negative check ("nothing reached the backend"): one more request
    through the same route, answered 200. Whatever the gateway could still send upstream for
    the requests before it goes out before this one is answered, so a wrong request would have
    reached the backend first; the backends here record a request before answering it."""
    assert request(port, "GET", SENTINEL_TARGET)[0] == 200


def wait_for(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    """Poll until ``predicate()`` is truthy: the gateway records a request just after answering it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)  # the poll interval: the one sleep that waits on conditions
