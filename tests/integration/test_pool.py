"""The async pool (``gateway.pool.Pool``) against a real loopback backend: hand-off,
cancellation and the retry's fresh connection, where the shell does what the core decided."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import h11
import pytest

from gateway.config import Upstream
from gateway.errors import PoolTimeout
from gateway.pool import Pool
from gateway.upstream import ConnState, UpstreamConnection
from tests.backends import Backend, backend

CONNECT_TIMEOUT_S = 5.0


def make_pool(be: Backend, *, max_connections: int = 1, pool_timeout_s: float = 5.0) -> Pool:
    up = Upstream(scheme="http", host="127.0.0.1", port=be.port, base_path=b"", display=be.url)
    return Pool(up, max_connections=max_connections, pool_timeout_s=pool_timeout_s, idle_timeout_s=30.0)


async def exchange(conn: UpstreamConnection) -> int:
    """One GET on ``conn``, read to the end (both h11 sides DONE: reusable)."""
    deadline = asyncio.get_running_loop().time() + 5
    conn.send_head(h11.Request(method="GET", target="/api/echo", headers=[("Host", "t")]), end=True)
    response = await conn.receive_response(deadline)
    while type(await conn.receive_event(deadline)) is not h11.EndOfMessage:
        pass
    return response.status_code


def run(be_test: Callable[[Backend], Awaitable[None]]) -> None:
    with backend() as be:
        asyncio.run(be_test(be))


def test_a_waiter_gets_the_released_connection_and_repr_says_so() -> None:
    async def scenario(be: Backend) -> None:
        pool = make_pool(be)
        first = await pool.acquire(CONNECT_TIMEOUT_S)
        waiting = asyncio.ensure_future(pool.acquire(CONNECT_TIMEOUT_S))
        await asyncio.sleep(0)
        assert repr(pool) == f"<Pool http://127.0.0.1:{be.port} [1 busy, 0 idle, 1 waiting]>"
        assert await exchange(first) == 200
        pool.release(first)
        assert await waiting is first and first.state is ConnState.ACTIVE
        assert await exchange(first) == 200
        pool.release(first)
        assert (pool.busy, pool.idle, pool.waiting) == (0, 1, 0) and first.state is ConnState.IDLE
        pool.close()

    run(scenario)


def test_a_cancelled_waiter_loses_no_slot() -> None:
    """Cancelled while queued, or just after it was handed the slot: the slot stays usable."""

    async def scenario(be: Backend) -> None:
        pool = make_pool(be)
        first = await pool.acquire(CONNECT_TIMEOUT_S)
        queued = asyncio.ensure_future(pool.acquire(CONNECT_TIMEOUT_S))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.waiting == 0
        handed = asyncio.ensure_future(pool.acquire(CONNECT_TIMEOUT_S))
        await asyncio.sleep(0)
        pool.discard(first)  # the slot goes to ``handed`` ...
        handed.cancel()  # ... which gives up before it runs
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert (pool.busy, pool.idle, pool.waiting) == (0, 0, 0)
        pool.pool_timeout_s = 0  # no waiting: the slot must be free now
        conn = await pool.acquire(CONNECT_TIMEOUT_S)
        pool.discard(conn)
        pool.close()

    run(scenario)


def test_the_retry_in_a_full_pool_closes_an_idle_connection_instead_of_waiting() -> None:
    """A retry asks for a fresh connection; with the pool full and one connection idle,
    the idle one makes room (the old pool queued the retry until the pool timeout)."""

    async def scenario(be: Backend) -> None:
        pool = make_pool(be, pool_timeout_s=0)
        conn = await pool.acquire(CONNECT_TIMEOUT_S)
        assert await exchange(conn) == 200
        pool.release(conn)
        try:
            fresh = await pool.acquire(CONNECT_TIMEOUT_S, fresh=True)
        except PoolTimeout:
            pytest.fail("the retry waited for a slot while a connection sat idle")
        assert fresh is not conn and conn.state is ConnState.CLOSED
        assert (pool.busy, pool.idle) == (1, 0)
        pool.discard(fresh)
        pool.close()

    run(scenario)
