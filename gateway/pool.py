"""Per-backend pool of persistent upstream connections.

Bookkeeping follows httpcore's ``connection_pool.py``: a bound on connections
(busy + idle + connecting), idle ones reused last-in-first-out so a few stay
hot and the rest expire, and a FIFO of waiters that is handed a connection
(or a free slot) on release. A request waits at most ``pool_timeout_s`` for
one, then 503. Idle connections expire before the backend's own keep-alive
timeout; one the backend closed while idle is dropped at once
(``connection_lost``) and never handed out.
"""

from __future__ import annotations

import asyncio
import collections
import socket

from gateway.config import Upstream
from gateway.errors import ConnectFailed, ConnectTimeout, PoolTimeout
from gateway.upstream import ConnState, UpstreamConnection


class Pool:
    def __init__(
        self,
        upstream: Upstream,
        *,
        max_connections: int,
        pool_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.upstream = upstream
        self.origin = upstream.origin
        self.max_connections = max_connections
        self.pool_timeout_s = pool_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._idle: list[UpstreamConnection] = []  # a stack: most recently used last
        self._total = 0  # busy + idle + connecting
        # A waiter's future gets a connection, or None: "a slot is yours, connect".
        self._waiters: collections.deque[asyncio.Future[UpstreamConnection | None]] = collections.deque()
        self.closed = False

    def __repr__(self) -> str:
        return f"<Pool {self.origin} [{self.busy} active, {self.idle} idle, {len(self._waiters)} waiting]>"

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return self._total - len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, connect_timeout_s: float, *, fresh: bool = False) -> UpstreamConnection:
        """A live connection, reused when one is idle and ``fresh`` is false."""
        if not fresh:
            loop_time = asyncio.get_running_loop().time()
            while self._idle:
                conn = self._idle.pop()
                if conn.usable_after_idle(loop_time, self.idle_timeout_s):
                    conn.state = ConnState.ACTIVE
                    return conn
                self._drop(conn)
        if self._total >= self.max_connections:
            handed = await self._wait_for_slot()
            if handed is not None:
                return handed
        else:
            self._total += 1
        # We hold a slot: open a connection in it, or give the slot back.
        try:
            return await self._connect(connect_timeout_s)
        except BaseException:
            self._total -= 1
            self._wake_waiter()
            raise

    async def _wait_for_slot(self) -> UpstreamConnection | None:
        if self.pool_timeout_s <= 0:
            raise PoolTimeout(f"all {self.max_connections} connections to {self.origin} are busy")
        waiter: asyncio.Future[UpstreamConnection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.pool_timeout_s):
                return await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                # Handed a connection or a slot just as we timed out or were
                # cancelled: give it back so neither leaks.
                handed = waiter.result()
                if handed is None:
                    self._total -= 1
                    self._wake_waiter()
                else:
                    self.release(handed)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no connection to {self.origin} free within {self.pool_timeout_s:g}s"
                    f" ({self.max_connections} busy)"
                ) from None
            raise

    async def _connect(self, connect_timeout_s: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        up = self.upstream
        try:
            async with asyncio.timeout(connect_timeout_s):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self), up.host, up.port)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {self.origin} timed out after {connect_timeout_s:g}s") from None
        except socket.gaierror as exc:
            raise ConnectFailed(f"cannot resolve {up.host!r}: {exc.strerror or exc}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.origin}: {exc.strerror or exc}") from None
        conn.state = ConnState.ACTIVE
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Back to the pool when both h11 sides are DONE, else closed."""
        if self.closed or not conn.can_return_to_pool():
            self.discard(conn)
            return
        conn.h11.start_next_cycle()
        for waiter in self._iter_live_waiters():
            waiter.set_result(conn)  # hand-off keeps it ACTIVE
            return
        conn.state = ConnState.IDLE
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a busy connection and free its slot."""
        if conn.state is ConnState.IDLE:  # pragma: no cover - callers pass busy ones
            self._idle.remove(conn)
        conn.state = ConnState.CLOSED
        if not conn.closed:
            conn.transport.close()
        self._total -= 1
        self._wake_waiter()

    def _drop(self, conn: UpstreamConnection) -> None:
        """Close an idle connection already taken off the stack."""
        conn.state = ConnState.CLOSED
        if not conn.closed:
            conn.transport.close()
        self._total -= 1

    def forget_idle(self, conn: UpstreamConnection) -> None:
        """The backend closed an idle connection: drop it now, not at checkout."""
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        self._total -= 1
        self._wake_waiter()

    def sweep(self, now: float) -> None:
        """Close idle connections past the expiry (called about once a second)."""
        keep = []
        for conn in self._idle:
            if now - conn.idle_since < self.idle_timeout_s:
                keep.append(conn)
            else:
                self._drop(conn)
        self._idle = keep

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    def _iter_live_waiters(self):  # type: ignore[no-untyped-def]
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                yield waiter

    def _wake_waiter(self) -> None:
        """A slot was freed: the first live waiter takes it over (and connects)."""
        for waiter in self._iter_live_waiters():
            self._total += 1
            waiter.set_result(None)
            return

