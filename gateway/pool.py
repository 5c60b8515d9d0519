"""Per-backend pool of persistent upstream connections.

Bookkeeping follows httpcore's ``connection_pool.py``: a bound on connections
(busy + idle + connecting), idle ones reused last-in-first-out so a few stay
hot and the rest expire, and a FIFO of waiters that is handed a connection
(or a free slot) on release. A request waits at most ``pool_timeout_s`` for
one, then 503. Idle connections expire before the backend's own keep-alive
timeout; one the backend closed while idle is dropped at once
(``connection_lost``) and never handed out.

Two layers, as httpcore's ``_assign_requests_to_connections()`` returns what
to close and closes it afterwards: ``PoolCore`` decides (no I/O, no asyncio,
unit-tested by a hypothesis state machine in ``tests/test_pool.py``) and
``Pool`` does what it decided (connect, close, wake a waiting task).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any, Generic, Protocol, TypeVar

from gateway.config import Upstream
from gateway.errors import ConnectFailed, ConnectTimeout, PoolTimeout
from gateway.upstream import ConnState, UpstreamConnection


class Pooled(Protocol):
    """What the core needs of a connection (``UpstreamConnection`` in the gateway)."""

    idle_since: float

    def usable_after_idle(self, now: float, idle_timeout_s: float) -> bool: ...


C = TypeVar("C", bound=Pooled)


class Waiter(Generic[C]):
    """A request queued for a slot. ``granted``: it was handed ``conn``, or a free
    slot to connect in when ``conn`` is None. ``token``: the shell's handle (a future)."""

    __slots__ = ("conn", "granted", "token")

    def __init__(self, token: Any = None) -> None:
        self.granted = False
        self.conn: C | None = None
        self.token = token


class PoolCore(Generic[C]):
    """The pool's decisions, without I/O.

    A slot is one connection, busy, idle or being opened; ``total`` counts
    them and never exceeds ``max_connections``. Every way a slot is freed goes
    through ``_free_slot``, which hands it to the first waiter if there is
    one: so a waiter never waits while a slot is free or a connection idle.
    Connections to close pile up in ``to_close`` and woken waiters in
    ``granted``; the caller takes both (``take_effects``) after each call.
    """

    __slots__ = ("closed", "granted", "idle", "idle_timeout_s", "max_connections", "to_close", "total", "waiters")

    def __init__(self, max_connections: int, idle_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.idle: list[C] = []  # a stack: most recently used last
        self.total = 0  # busy + idle + connecting
        self.waiters: collections.deque[Waiter[C]] = collections.deque()  # FIFO, all live
        self.closed = False
        self.to_close: list[C] = []
        self.granted: list[Waiter[C]] = []

    def __repr__(self) -> str:
        return f"[{self.busy} busy, {len(self.idle)} idle, {len(self.waiters)} waiting]"

    @property
    def busy(self) -> int:
        return self.total - len(self.idle)

    def take_effects(self) -> tuple[list[C], list[Waiter[C]]]:
        """What to close and whom to wake, since the last call."""
        effects = self.to_close, self.granted
        self.to_close, self.granted = [], []
        return effects

    # --- checkout ---------------------------------------------------------
    def checkout(self, now: float, *, fresh: bool = False) -> C | bool:
        """A reusable idle connection; else True: a slot is yours, connect;
        else False: the pool is full, ``wait()``. Stale idle ones go to
        ``to_close``; ``fresh`` (a retry) wants a new connection, and closes
        an idle one rather than wait while it sits unused."""
        if not fresh:
            idle = self.idle
            while idle:
                conn = idle.pop()
                if conn.usable_after_idle(now, self.idle_timeout_s):
                    return conn
                self.to_close.append(conn)
                self._free_slot()
        if self.total < self.max_connections:
            self.total += 1
            return True
        if self.idle:  # fresh, and the pool is full: the oldest idle one makes room
            self.to_close.append(self.idle.pop(0))
            return True
        return False

    def wait(self, token: Any = None) -> Waiter[C]:
        waiter: Waiter[C] = Waiter(token)
        self.waiters.append(waiter)
        return waiter

    def cancel(self, waiter: Waiter[C], now: float) -> None:
        """The waiter gave up (timeout, cancellation): whatever it was handed goes back."""
        if not waiter.granted:
            self.waiters.remove(waiter)
            return
        conn, waiter.conn, waiter.granted = waiter.conn, None, False
        if conn is None:
            self._free_slot()
        else:
            self.release(conn, now)  # it was reusable when it was handed over

    def connect_failed(self) -> None:
        """A reserved slot whose connection did not open."""
        self._free_slot()

    # --- checkin ----------------------------------------------------------
    def release(self, conn: C, now: float) -> None:
        """A busy connection that can be reused: to the first waiter, else idle."""
        if self.closed:
            self.discard(conn)
        elif self.waiters:
            self._grant(conn)
        else:
            conn.idle_since = now
            self.idle.append(conn)

    def discard(self, conn: C) -> None:
        """Close a busy connection (never an idle one) and free its slot."""
        self.to_close.append(conn)
        self._free_slot()

    def idle_closed(self, conn: C) -> None:
        """The backend closed an idle connection: free its slot now, not at checkout."""
        try:
            self.idle.remove(conn)
        except ValueError:
            return  # already taken off the stack (checkout, expiry)
        self.to_close.append(conn)
        self._free_slot()

    def expire(self, now: float) -> None:
        """Close idle connections past the expiry (called about once a second)."""
        keep = []
        for conn in self.idle:
            if now - conn.idle_since < self.idle_timeout_s:
                keep.append(conn)
            else:
                self.to_close.append(conn)
        freed = len(self.idle) - len(keep)
        self.idle = keep
        for _ in range(freed):
            self._free_slot()

    def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            self.to_close.append(conn)
            self._free_slot()

    # --- the one way a slot is freed ----------------------------------------
    def _free_slot(self) -> None:
        if self.waiters:
            self._grant(None)  # the slot passes to the waiter, who connects
        else:
            self.total -= 1

    def _grant(self, conn: C | None) -> None:
        waiter = self.waiters.popleft()
        waiter.granted = True
        waiter.conn = conn
        self.granted.append(waiter)


class Pool:
    """The async shell: connects, closes and wakes as ``PoolCore`` decides."""

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
        self._core: PoolCore[UpstreamConnection] = PoolCore(max_connections, idle_timeout_s)

    def __repr__(self) -> str:
        return f"<Pool {self.origin} {self._core!r}>"

    @property
    def idle(self) -> int:
        return len(self._core.idle)

    @property
    def busy(self) -> int:
        return self._core.busy

    @property
    def waiting(self) -> int:
        return len(self._core.waiters)

    @property
    def closed(self) -> bool:
        return self._core.closed

    async def acquire(self, connect_timeout_s: float, *, fresh: bool = False) -> UpstreamConnection:
        """A live connection, reused when one is idle and ``fresh`` is false."""
        got = self._core.checkout(asyncio.get_running_loop().time(), fresh=fresh)
        self._apply()  # stale idle connections it took off
        if not isinstance(got, bool):
            got.state = ConnState.ACTIVE
            return got
        if not got:
            handed = await self._wait()
            if handed is not None:
                return handed
        # We hold a slot: open a connection in it, or give the slot back.
        try:
            return await self._connect(connect_timeout_s)
        except BaseException:
            self._core.connect_failed()
            self._apply()
            raise

    async def _wait(self) -> UpstreamConnection | None:
        if self.pool_timeout_s <= 0:
            raise PoolTimeout(f"all {self.max_connections} connections to {self.origin} are busy")
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        waiter = self._core.wait(woken)
        try:
            async with asyncio.timeout(self.pool_timeout_s):
                await woken
        except BaseException as exc:
            # Gave up (timeout, cancellation): a slot or connection handed
            # over just now goes back, so neither leaks.
            if waiter.conn is not None:
                waiter.conn.state = ConnState.IDLE
            self._core.cancel(waiter, loop.time())
            self._apply()
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no connection to {self.origin} free within {self.pool_timeout_s:g}s"
                    f" ({self.max_connections} busy)"
                ) from None
            raise
        return waiter.conn

    async def _connect(self, connect_timeout_s: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        up = self.upstream
        try:
            async with asyncio.timeout(connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self.origin, self._idle_closed), up.host, up.port
                )
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
        core = self._core
        if core.closed or not conn.can_return_to_pool():
            core.discard(conn)
        else:
            conn.h11.start_next_cycle()
            conn.state = ConnState.IDLE
            core.release(conn, asyncio.get_running_loop().time())
        self._apply()

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a busy connection and free its slot."""
        self._core.discard(conn)
        self._apply()

    def _idle_closed(self, conn: UpstreamConnection) -> None:
        self._core.idle_closed(conn)
        self._apply()

    def sweep(self, now: float) -> None:
        """Close idle connections past the expiry (called about once a second)."""
        self._core.expire(now)
        self._apply()

    def close(self) -> None:
        self._core.close()
        self._apply()

    def _apply(self) -> None:
        core = self._core
        if not (core.to_close or core.granted):
            return
        to_close, granted = core.take_effects()
        for conn in to_close:
            conn.state = ConnState.CLOSED
            if not conn.closed:
                conn.transport.close()
        for waiter in granted:
            if waiter.conn is not None:
                waiter.conn.state = ConnState.ACTIVE  # a hand-off: it stays busy
            woken: asyncio.Future[None] = waiter.token
            if not woken.done():
                woken.set_result(None)
