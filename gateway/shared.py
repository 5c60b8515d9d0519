"""Several workers, one view: per-worker snapshot files in a supervisor-owned directory.

Each worker keeps its counters in its own memory (the hot path is unchanged)
and, once a second, writes a snapshot of them (counters, histograms, passive
service state, gauges, its ``recent`` ring) to ``worker-<pid>.json`` in the
directory, atomically (a temporary file, then ``os.replace``). A worker asked
for ``/api/gateway/metrics`` and the like first rewrites its own snapshot,
then reads everyone's and sums them (``View``). Every figure anybody sees
comes from a snapshot, so whichever worker answers, the totals never go down
between two scrapes (Prometheus would read a decrease as a counter reset).

When a worker dies, the supervisor folds its last snapshot into a new
``retired-<n>.json`` (per worker id, so a restarted worker's series carry on)
that names the files it replaces in ``covers``, then deletes them. A reader
drops what a file it read covers, and lists the directory again if a file
vanished under it: nothing is counted twice or missed. A worker killed with
``-9`` loses only what it counted since its last snapshot (at most a second).

Measured against prometheus_client's multiprocess mode (one mmap write per
counter update, ~1 us each, five or more per request) this costs nothing per
request: see docs/workers.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.metrics import Gauges, Metrics

# The directory of this gateway's snapshots: set by the supervisor before it
# forks the workers (inherited by them); None with one worker (no sharing).
directory: str | None = None
SNAPSHOT_INTERVAL_S = 1.0
FRESH_S = 0.1  # an answering worker rewrites its own snapshot when older than this


def make_directory() -> str:
    global directory
    directory = tempfile.mkdtemp(prefix="gateway-workers-")
    return directory


def remove_directory(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def worker_file(pid: int) -> str:
    return f"worker-{pid}.json"


def write(path: str, name: str, doc: dict[str, Any]) -> None:
    tmp = os.path.join(path, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(doc))
    os.replace(tmp, os.path.join(path, name))


def read_all(path: str) -> dict[str, dict[str, Any]]:
    """Every current snapshot by file name, without those a retired file covers."""
    for _ in range(10):
        docs: dict[str, dict[str, Any]] = {}
        vanished = False
        try:
            names = sorted(n for n in os.listdir(path) if n.endswith(".json"))
        except FileNotFoundError:
            return {}
        for name in names:
            try:
                with open(os.path.join(path, name), "rb") as f:
                    docs[name] = orjson.loads(f.read())
            except FileNotFoundError:
                vanished = True  # retired meanwhile: its replacement is in a new listing
                break
            except ValueError:
                continue
        if vanished:
            continue
        covered = {c for doc in docs.values() for c in doc.get("covers", ())}
        return {name: doc for name, doc in docs.items() if name not in covered}
    return {}


@dataclass(slots=True)
class View:
    """All workers as one: per worker id (counters summed over restarts, gauges of
    the live process), their sum, and the merged ``recent`` ring, newest first."""

    workers: list[tuple[int, Metrics, Gauges]]
    total: Metrics
    gauges: Gauges
    recent: list[dict[str, Any]]
    live_workers: int = 1
    started: float = 0.0


def merge(docs: list[dict[str, Any]], services: list[str], recent_size: int) -> View:
    per_worker: dict[int, tuple[Metrics, Gauges]] = {}
    recent: list[dict[str, Any]] = []
    live = 0
    for doc in docs:
        parts = doc["workers"] if "covers" in doc else {str(doc["worker"]): doc}
        for wid, part in parts.items():
            m, g = per_worker.setdefault(int(wid), (Metrics(services), Gauges()))
            m.add(Metrics.from_dict(part["metrics"]))
            if "gauges" in part:
                g.add(Gauges(**part["gauges"]))
        if "covers" not in doc:
            live += 1
        recent.extend(doc.get("recent", ()))
    total, gauges = Metrics(services), Gauges()
    for m, g in per_worker.values():
        total.add(m)
        gauges.add(g)
    recent.sort(key=lambda r: r["ts"], reverse=True)
    workers = [(wid, m, g) for wid, (m, g) in sorted(per_worker.items())]
    return View(workers, total, gauges, recent[:recent_size], live, total.started)


def retire(path: str, pid: int, seq: int) -> None:
    """Fold a dead worker's last snapshot into a new retired file (supervisor side)."""
    docs = read_all(path)
    dead = worker_file(pid)
    _remove_temporary(path, dead)
    if dead not in docs:  # it died before its first snapshot: nothing to fold
        return
    old = [name for name, doc in docs.items() if "covers" in doc]
    workers: dict[str, Any] = {}
    recent: list[dict[str, Any]] = []
    sources = [docs[name] for name in old] + [docs[dead]]
    for doc in sources:
        parts = doc["workers"] if "covers" in doc else {str(doc["worker"]): doc}
        for wid, part in parts.items():
            m = Metrics.from_dict(part["metrics"])
            if wid in workers:
                merged = Metrics.from_dict(workers[wid]["metrics"])
                merged.add(m)
                m = merged
            workers[wid] = {"metrics": m.to_dict()}  # a dead process has no gauges
        recent.extend(doc.get("recent", ()))
    recent.sort(key=lambda r: r["ts"], reverse=True)
    covers = [*old, dead]
    write(path, f"retired-{seq:06d}.json", {"covers": covers, "workers": workers, "recent": recent[:1000]})
    for name in covers:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass


def _remove_temporary(path: str, name: str) -> None:
    """A temporary file a dead worker left half-written (``write``)."""
    for entry in os.listdir(path):
        if entry.startswith(f".{name}."):
            try:
                os.unlink(os.path.join(path, entry))
            except FileNotFoundError:
                pass
