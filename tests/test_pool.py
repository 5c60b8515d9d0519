"""The pool's bookkeeping (``gateway.pool.PoolCore``), driven by a hypothesis state machine.

Every operation the gateway performs (checkout, connect or fail, release,
discard, wait, give up waiting, the backend closing an idle connection,
expiry, shutdown) in any order, checking after each one that no slot leaks,
that busy plus idle never exceeds the maximum, that a freed slot always goes
to a waiting request (no waiter waits while a slot is free or a connection
idle), and that a waiter giving up never loses the slot it was handed.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.pool import PoolCore, Waiter

IDLE_TIMEOUT_S = 5.0


class Conn:
    """A stand-in connection: ``alive`` false once the backend closed it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.idle_since = 0.0
        self.alive = True
        self.closed = False  # the pool asked for it to be closed

    def usable_after_idle(self, now: float, idle_timeout_s: float) -> bool:
        return self.alive and now - self.idle_since < idle_timeout_s

    def __repr__(self) -> str:
        return f"Conn({self.n})"


class PoolMachine(RuleBasedStateMachine):
    @initialize(max_connections=st.integers(1, 4))
    def start(self, max_connections: int) -> None:
        self.core: PoolCore[Conn] = PoolCore(max_connections, IDLE_TIMEOUT_S)
        self.now = 0.0
        self.made = 0
        self.busy: list[Conn] = []  # checked out, in use by a request
        self.slots = 0  # reserved slots whose connection is being opened
        self.waiting: list[Waiter[Conn]] = []  # queued, as the requests see it
        self.woken: list[Waiter[Conn]] = []  # granted, not yet resumed

    # --- helpers ----------------------------------------------------------
    def _effects(self) -> None:
        to_close, granted = self.core.take_effects()
        for conn in to_close:
            assert not conn.closed, f"{conn} closed twice"
            assert conn not in self.busy, f"{conn} closed while a request uses it"
            conn.closed = True
        for waiter in granted:
            assert waiter in self.waiting, "a waiter that gave up was woken"
            self.waiting.remove(waiter)
            self.woken.append(waiter)

    def _new_conn(self) -> Conn:
        self.made += 1
        return Conn(self.made)

    # --- rules --------------------------------------------------------------
    @rule(fresh=st.booleans())
    def checkout(self, fresh: bool) -> None:
        got = self.core.checkout(self.now, fresh=fresh)
        self._effects()
        if got is True:
            self.slots += 1
        elif got is False:
            self.waiting.append(self.core.wait())
        else:
            assert isinstance(got, Conn) and got.alive and not got.closed
            assert not fresh
            self.busy.append(got)

    @precondition(lambda self: self.slots)
    @rule(ok=st.booleans())
    def connect(self, ok: bool) -> None:
        self.slots -= 1
        if ok:
            self.busy.append(self._new_conn())
        else:
            self.core.connect_failed()
            self._effects()

    @precondition(lambda self: self.busy)
    @rule(data=st.data(), reusable=st.booleans())
    def release(self, data: st.DataObject, reusable: bool) -> None:
        conn = data.draw(st.sampled_from(self.busy))
        self.busy.remove(conn)
        if reusable and conn.alive:
            self.core.release(conn, self.now)
        else:
            self.core.discard(conn)
        self._effects()

    @precondition(lambda self: self.woken)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """A woken request runs: it uses the connection, or connects in the slot."""
        waiter = data.draw(st.sampled_from(self.woken))
        self.woken.remove(waiter)
        assert waiter.granted
        if waiter.conn is None:
            self.slots += 1
        else:
            assert not waiter.conn.closed
            self.busy.append(waiter.conn)

    @precondition(lambda self: self.waiting or self.woken)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        """Timeout or cancellation, before or after the waiter was handed something."""
        waiter = data.draw(st.sampled_from(self.waiting + self.woken))
        if waiter in self.waiting:
            self.waiting.remove(waiter)
        else:
            self.woken.remove(waiter)
        self.core.cancel(waiter, self.now)
        self._effects()

    @precondition(lambda self: self.core.idle)
    @rule(data=st.data(), notify=st.booleans())
    def backend_closes_idle(self, data: st.DataObject, notify: bool) -> None:
        """The backend closes an idle connection; ``connection_lost`` may not have run yet."""
        conn = data.draw(st.sampled_from(self.core.idle))
        conn.alive = False
        if notify:
            self.core.idle_closed(conn)
            self._effects()

    @rule(seconds=st.floats(0, 2 * IDLE_TIMEOUT_S))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def sweep(self) -> None:
        self.core.expire(self.now)
        self._effects()
        assert all(self.now - c.idle_since < IDLE_TIMEOUT_S for c in self.core.idle)

    @rule()
    def close(self) -> None:
        self.core.close()
        self._effects()
        assert not self.core.idle

    # --- invariants ---------------------------------------------------------
    @invariant()
    def no_slot_leaks(self) -> None:
        held = sum(1 for w in self.woken if w.granted)
        assert self.core.total == len(self.busy) + self.slots + len(self.core.idle) + held

    @invariant()
    def never_over_the_maximum(self) -> None:
        assert 0 <= self.core.total <= self.core.max_connections
        assert self.core.busy + len(self.core.idle) <= self.core.max_connections

    @invariant()
    def a_free_slot_serves_a_waiter(self) -> None:
        if self.core.waiters:
            assert self.core.total == self.core.max_connections
            assert not self.core.idle

    @invariant()
    def waiters_are_the_live_ones(self) -> None:
        assert list(self.core.waiters) == self.waiting

    @invariant()
    def idle_connections_are_open(self) -> None:
        assert not any(c.closed for c in self.core.idle)
        assert len(set(map(id, self.core.idle))) == len(self.core.idle)


PoolMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
test_pool_bookkeeping = PoolMachine.TestCase


def test_repr_counts_busy_idle_and_waiting() -> None:
    core: PoolCore[Conn] = PoolCore(3, IDLE_TIMEOUT_S)
    assert core.checkout(0.0) is True and core.checkout(0.0) is True and core.checkout(0.0) is True
    assert core.checkout(0.0) is False
    core.wait()
    assert repr(core) == "[3 busy, 0 idle, 1 waiting]"
    core.release(Conn(1), 0.0)  # handed to the waiter
    core.release(Conn(2), 0.0)
    assert repr(core) == "[2 busy, 1 idle, 0 waiting]"


def test_a_discarded_connection_wakes_a_waiter_for_its_slot() -> None:
    core: PoolCore[Conn] = PoolCore(1, IDLE_TIMEOUT_S)
    assert core.checkout(0.0) is True
    conn = Conn(1)
    waiter = core.wait()
    core.discard(conn)
    to_close, granted = core.take_effects()
    assert to_close == [conn] and granted == [waiter]
    assert waiter.granted and waiter.conn is None and core.total == 1


def test_a_fresh_checkout_does_not_wait_while_a_connection_sits_idle() -> None:
    """A retry wants a new connection; the pool is full, one of them idle: that one is
    closed to make room. (The old pool queued the retry, and when the idle one expired
    its ``_drop`` freed the slot without waking it: a 503 after the pool timeout.)"""
    core: PoolCore[Conn] = PoolCore(2, IDLE_TIMEOUT_S)
    assert core.checkout(0.0) is True and core.checkout(0.0) is True
    idle = Conn(1)
    core.release(idle, 0.0)
    assert core.checkout(1.0, fresh=True) is True
    assert core.take_effects() == ([idle], [])
    assert core.total == 2 and not core.idle


def test_an_expired_idle_connection_frees_its_slot() -> None:
    core: PoolCore[Conn] = PoolCore(2, IDLE_TIMEOUT_S)
    assert core.checkout(0.0) is True
    conn = Conn(1)
    core.release(conn, 0.0)
    core.expire(IDLE_TIMEOUT_S - 1)
    assert core.idle == [conn]
    core.expire(IDLE_TIMEOUT_S)
    assert core.take_effects() == ([conn], []) and core.total == 0
