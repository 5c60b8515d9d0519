"""One JSON line per request on stdout, and JSON event lines (CONTRACT.md, Logs).

Lines are serialised with orjson and written straight to the stdout buffer,
coalesced per event-loop iteration: no ``logging`` formatting chain on the
hot path, one ``write`` for many requests under load.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from typing import Any, BinaryIO

import orjson

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


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
        "start_wall",
        "start",
        "request_id",
        "request_id_bytes",
        "client",
        "method",
        "path",
        "service",
        "upstream",
        "status",
        "bytes_in",
        "bytes_out",
        "error",
        "upstream_start",
        "upstream_end",
        "response_started",
        "trace_id",
        "route",
        "internal",
        "end",
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

    def access(self, rec: Record) -> None:
        """Log a finished request (``rec.end`` set)."""
        if self._recent_enabled and not rec.internal:
            self.recent.appendleft(rec)
        if self.access_log:
            self._emit(orjson.dumps(rec.as_dict(), option=orjson.OPT_APPEND_NEWLINE))

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
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(data)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # stdout gone: keep serving
            pass
