"""One JSON line per request on stdout, and JSON event lines (docs/forwarding.md, Logs).

Lines are serialised with orjson and written straight to stdout's file
descriptor, coalesced per event-loop iteration: no ``logging`` formatting
chain on the hot path, one ``write`` for many requests under load.

Several workers share one stdout (a pipe, in a container). A ``write`` of at
most ``PIPE_BUF`` bytes to a pipe is atomic (POSIX), so each ``os.write``
carries whole lines only and at most ``PIPE_BUF`` bytes: lines are never split
nor interleaved with another worker's. An access line that would be longer is
shortened to fit: its longest fields (``path``, ``upstream``, ``method``,
``client``) are cut and end in ``...``. Event lines are not cut (a traceback
may exceed the limit, and is then written whole in one write).
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import select
import sys
import time
from typing import Any, BinaryIO

import orjson

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)  # 4096 on Linux
_CUTTABLE = ("path", "upstream", "method", "client")


_second_cache: list[Any] = [-1, ""]  # [whole second, "YYYY-MM-DDTHH:MM:SS"]


def rfc3339(ts: float) -> str:
    """UTC with milliseconds and ``Z``; the date part is formatted once per second."""
    sec = int(ts)
    if sec != _second_cache[0]:
        _second_cache[0] = sec
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second_cache[1]}.{int((ts - sec) * 1000):03d}Z"


class Record:
    """What one request did; filled in as it goes, logged once in ``finally``."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "end",
        "error",
        "internal",
        "method",
        "path",
        "request_id",
        "request_id_bytes",
        "response_started",
        "route",
        "service",
        "start",
        "start_wall",
        "status",
        "trace_id",
        "upstream",
        "upstream_end",
        "upstream_start",
    )

    def __init__(self, client: str, method: bytes, target: bytes, request_id: bytes) -> None:
        self.start_wall = time.time()
        self.start = time.perf_counter()
        self.request_id_bytes = request_id
        self.request_id = request_id.decode("ascii")
        self.client = client
        self.method = method.decode("ascii", "replace")
        self.path = target.decode("latin-1")
        self.service: str | None = None
        self.upstream: str | None = None
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.error: str | None = None
        self.upstream_start = 0.0
        self.upstream_end = 0.0
        self.response_started = False
        self.trace_id: str | None = None
        self.route: Any = None  # the config.Route when forwarded
        self.internal = False  # a gateway endpoint: kept out of `recent` (dashboards poll them)
        self.end = 0.0  # perf_counter when the request was done

    def as_dict(self) -> dict[str, Any]:
        upstream_ms = (
            round((self.upstream_end - self.upstream_start) * 1000, 3) if self.upstream_start else None
        )
        return {
            "ts": rfc3339(self.start_wall),
            "request_id": self.request_id,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "service": self.service,
            "upstream": self.upstream,
            "status": self.status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round((self.end - self.start) * 1000, 3),
            "upstream_ms": upstream_ms,
            "error": self.error,
            "trace_id": self.trace_id,
        }


class Logger:
    """Access and event lines to a binary stream (stdout by default)."""

    def __init__(self, *, access_log: bool = True, level: str = "info", stream: BinaryIO | None = None,
                 recent_size: int = 100) -> None:
        self.access_log = access_log
        self.level = LEVELS[level]
        self.stream = stream if stream is not None else sys.stdout.buffer
        # Records, turned into dicts only when /api/gateway/recent is read.
        self.recent: collections.deque[Record] = collections.deque(maxlen=max(recent_size, 0) or None)
        self._recent_enabled = recent_size > 0
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        try:
            self._fd: int | None = self.stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None  # an in-memory stream (tests)

    def access(self, rec: Record) -> None:
        """Log a finished request (``rec.end`` set)."""
        if self._recent_enabled and not rec.internal:
            self.recent.appendleft(rec)
        if self.access_log:
            line = orjson.dumps(rec.as_dict(), option=orjson.OPT_APPEND_NEWLINE)
            self._emit(line if len(line) <= PIPE_BUF else _shorten(rec.as_dict(), line))

    def event(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.level:
            return
        line = {"ts": rfc3339(time.time()), "level": level, "event": event, **fields}
        self._emit(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE, default=str))

    def _emit(self, line: bytes) -> None:
        self._pending.append(line)
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            if self._fd is None:
                self.stream.write(b"".join(pending))
                self.stream.flush()
                return
            self.stream.flush()  # anything written to the stream object itself goes first
            chunk: list[bytes] = []
            size = 0
            for line in pending:  # whole lines, at most PIPE_BUF bytes per write
                if chunk and size + len(line) > PIPE_BUF:
                    _write_all(self._fd, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            _write_all(self._fd, b"".join(chunk))
        except (BrokenPipeError, ValueError):  # stdout gone: keep serving
            pass


def _write_all(fd: int, data: bytes) -> None:
    """One ``os.write`` (complete and atomic on a pipe up to PIPE_BUF); a file or
    terminal may take less, then the rest follows."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _shorten(doc: dict[str, Any], line: bytes) -> bytes:
    """The access line cut to PIPE_BUF bytes: its longest free-text fields shortened."""
    for _ in range(16):
        excess = len(line) - PIPE_BUF
        if excess <= 0:
            break
        key = max(_CUTTABLE, key=lambda k: len(doc.get(k) or ""))
        value = doc[key] or ""
        if len(value) <= 64:
            break
        doc[key] = value[: max(len(value) - excess - 8, 61)] + "..."
        line = orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)
    return line
