"""N worker processes sharing one port (SO_REUSEPORT), under one supervisor.

The supervisor owns no socket and runs no event loop: it forks the workers,
restarts one that dies, and on SIGTERM/SIGINT forwards SIGTERM so every worker
drains (``server.serve``) and waits for them, then exits 0. A worker that
keeps dying right after start (say the port is taken) stops the whole thing
with exit code 1 instead of a restart loop.

It also owns the workers' snapshot directory (``gateway.shared``): made before
the first fork, a dead worker's last snapshot folded into the retired totals
before its replacement starts, removed at exit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

from gateway import shared
from gateway.accesslog import Logger
from gateway.config import Config

QUICK_DEATH_S = 2.0  # a worker dying sooner than this after start is "crashing"
MAX_QUICK_DEATHS = 5
POLL_S = 0.1


def run_workers(config: Config, worker_main: Callable[[Config, int], int], log: Logger) -> int:
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker id, start time)
    try:
        state_dir = shared.make_directory()
    except OSError as exc:
        log.event("error", "supervisor_failed", error=f"cannot create the workers' directory: {exc}",
                  detail="set TMPDIR to a writable directory")
        log.flush()
        return 1
    retired = 0

    def retire(pid: int) -> None:
        nonlocal retired
        retired += 1
        try:
            shared.retire(state_dir, pid, retired)
        except (OSError, ValueError, KeyError) as exc:
            log.event("error", "retire_failed", pid=pid, error=repr(exc))

    def spawn(worker_id: int) -> None:
        log.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = worker_main(config, worker_id)
            finally:
                sys.stdout.flush()
                os._exit(code)
        children[pid] = (worker_id, time.monotonic())

    for worker_id in range(config.workers):
        spawn(worker_id)
    log.event("info", "supervisor_started", workers=config.workers, workers_reason=config.workers_reason,
              pids=sorted(children), pid=os.getpid())

    quick_deaths = 0
    failed = False
    while children and not stopping:
        pid, status = _reap()
        if pid == 0:
            time.sleep(POLL_S)
            continue
        worker_id, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        retire(pid)
        if stopping:
            break
        quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
        log.event("error", "worker_died", worker=worker_id, pid=pid, exit_code=code)
        if quick_deaths >= MAX_QUICK_DEATHS:
            log.event("error", "workers_keep_dying", detail="giving up; check the configuration and the port")
            failed = True
            stopping = True
            break
        spawn(worker_id)

    # Drain: every worker gets SIGTERM and finishes its requests in flight.
    for pid in children:
        _kill(pid, signal.SIGTERM)
    grace = config.drain_delay_s + config.shutdown_timeout_s + 5.0
    deadline = time.monotonic() + grace
    exit_code = 1 if failed else 0
    while children and time.monotonic() < deadline:
        pid, status = _reap()
        if pid == 0:
            time.sleep(POLL_S)
            continue
        children.pop(pid, None)
        if os.waitstatus_to_exitcode(status) != 0:
            exit_code = 1
    for pid in children:
        _kill(pid, signal.SIGKILL)
        exit_code = 1
    shared.remove_directory(state_dir)
    log.event("info", "supervisor_stopped", exit_code=exit_code)
    log.flush()
    return exit_code


def _reap() -> tuple[int, int]:
    try:
        return os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0, 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
