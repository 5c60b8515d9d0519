"""Workers, pure parts: the CPU count of ``auto``, snapshot merging and retiring, whole log lines."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import orjson
import pytest

from gateway import shared
from gateway.accesslog import PIPE_BUF, Logger, Record
from gateway.config import usable_cpus
from gateway.metrics import Metrics, method_class


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line + "\n")
    return str(root), str(proc)


@pytest.mark.parametrize(
    ("proc_line", "files", "affinity", "expected"),
    [
        # cgroup v2: 1.5 CPUs rounds up to 2; "max" is no quota; a parent's quota counts too
        ("0::/", {"cpu.max": "150000 100000\n"}, 8, 2),
        ("0::/", {"cpu.max": "max 100000\n"}, 8, 8),
        ("0::/kubepods/pod1", {"kubepods/cpu.max": "100000 100000\n", "kubepods/pod1/cpu.max": "max 100000\n"}, 8, 1),
        ("0::/", {"cpu.max": "50000 100000\n"}, 8, 1),  # half a CPU: still one worker
        # cgroup v1: quota / period; -1 is no quota
        ("4:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 8, 3),
        ("4:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 8, 8),
        # the affinity is smaller than the quota: the affinity wins
        ("0::/", {"cpu.max": "400000 100000\n"}, 2, 2),
        # no cgroup files at all
        ("0::/", {}, 3, 3),
    ],
)
def test_auto_counts_affinity_and_cgroup_quota(tmp_path, proc_line, files, affinity, expected) -> None:
    """Config: `auto` is one worker per CPU this process may use: its affinity, and the cgroup CPU
    quota when one is set (v2 cpu.max, v1 cfs_quota_us/cfs_period_us), rounded up, at least 1."""
    root, proc = _cgroup(tmp_path, proc_line, files)
    count, reason = usable_cpus(root, proc, affinity=affinity)
    assert count == expected
    assert ("quota" in reason) == (expected < affinity), reason


def test_auto_without_proc_cgroup_uses_the_affinity(tmp_path) -> None:
    assert usable_cpus(str(tmp_path), str(tmp_path / "missing"), affinity=5) == (5, "cpu affinity: 5 cpus")


def test_method_label_is_bounded() -> None:
    assert method_class("GET") == "GET"
    assert method_class("BREW") == "OTHER"


def _metrics(n: int, code: int = 200) -> Metrics:
    m = Metrics(["svc"])
    for _ in range(n):
        m.record("svc", "GET", code, None, 0.002, 0.001, 0, 10, 1000.0 + n)
    return m


def _snap(worker: int, pid: int, m: Metrics, recent: list[dict[str, str]] | None = None) -> dict[str, object]:
    return {"worker": worker, "pid": pid, "metrics": m.to_dict(),
            "gauges": {"connections": 1, "in_flight": 0, "pools": {"svc": [1, 0, 0]}, "rss_bytes": 1, "open_fds": 1},
            "recent": recent or []}


def test_snapshots_merge_per_worker_and_in_total(tmp_path) -> None:
    """Workers: counts add up across workers; gauges come from the live processes; recent is merged newest first."""
    shared.write(str(tmp_path), shared.worker_file(10), _snap(0, 10, _metrics(3), [{"ts": "2026-01-01T00:00:01.000Z"}]))
    later = [{"ts": "2026-01-01T00:00:02.000Z"}]
    shared.write(str(tmp_path), shared.worker_file(11), _snap(1, 11, _metrics(2, 502), later))
    view = shared.merge(list(shared.read_all(str(tmp_path)).values()), ["svc"], 100)
    assert [w for w, _, _ in view.workers] == [0, 1]
    assert view.total.requests == {("svc", "GET", 200): 3, ("svc", "GET", 502): 2}
    assert view.total.services["svc"].requests == 5 and view.total.services["svc"].total.n == 5
    assert view.gauges.connections == 2 and view.gauges.pools["svc"] == [2, 0, 0]
    assert [r["ts"][-7:] for r in view.recent] == ["02.000Z", "01.000Z"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_retired_worker_keeps_counting_in_the_totals(tmp_path) -> None:
    """Workers: a dead worker's last snapshot is folded into the retired totals (per worker id, so its
    series carry on after the restart); twice in a row, nothing is lost or counted twice."""
    d = str(tmp_path)
    shared.write(d, shared.worker_file(10), _snap(0, 10, _metrics(3)))
    shared.write(d, shared.worker_file(11), _snap(1, 11, _metrics(2)))
    shared.retire(d, 10, 1)
    shared.write(d, shared.worker_file(12), _snap(0, 12, _metrics(4)))  # the restarted worker 0
    shared.retire(d, 12, 2)
    shared.write(d, shared.worker_file(13), _snap(0, 13, _metrics(1)))
    assert sorted(os.listdir(d)) == ["retired-000002.json", "worker-11.json", "worker-13.json"]
    view = shared.merge(list(shared.read_all(d).values()), ["svc"], 100)
    per_worker = {w: m.services["svc"].requests for w, m, _ in view.workers}
    assert per_worker == {0: 3 + 4 + 1, 1: 2}
    assert view.live_workers == 2
    assert view.gauges.connections == 2  # the dead ones have no gauges


def test_a_reader_skips_what_a_retired_file_covers(tmp_path) -> None:
    """A retired file written but the files it replaces not yet deleted: counted once."""
    d = str(tmp_path)
    shared.write(d, shared.worker_file(10), _snap(0, 10, _metrics(3)))
    shared.write(d, "retired-000001.json", {"covers": [shared.worker_file(10)],
                                            "workers": {"0": {"metrics": _metrics(3).to_dict()}}, "recent": []})
    docs = shared.read_all(d)
    assert list(docs) == ["retired-000001.json"]


def test_long_access_lines_are_cut_to_pipe_buf_and_writes_carry_whole_lines(tmp_path) -> None:
    """Logs: each write holds whole lines and at most PIPE_BUF bytes; a longer access line has its
    longest fields cut (ending in ...)."""
    path = tmp_path / "log"
    writes: list[int] = []
    with open(path, "wb", buffering=0) as f:
        log = Logger(stream=io.BufferedWriter(f))
        real_write = os.write

        def counting_write(fd: int, data: bytes) -> int:
            writes.append(len(data))
            return real_write(fd, data)

        os_write, os.write = os.write, counting_write
        async def burst() -> None:  # one loop iteration: the lines are coalesced
            for i in range(20):
                rec = Record("127.0.0.1", b"GET", b"/api/svc/" + b"x" * (300 if i < 10 else 9000), b"id-%d" % i)
                rec.upstream = "http://b:1" + rec.path
                rec.end = rec.start
                log.access(rec)
            await asyncio.sleep(0)  # behaviour: the end of one loop iteration, where lines are flushed

        try:
            asyncio.run(burst())
        finally:
            os.write = os_write
    lines = path.read_bytes().splitlines()
    assert len(lines) == 20
    assert all(w <= PIPE_BUF for w in writes) and len(writes) < 20, writes
    for i, line in enumerate(lines):
        doc = orjson.loads(line)
        assert len(line) + 1 <= PIPE_BUF
        assert doc["path"].endswith("...") == (i >= 10)
        assert doc["request_id"] == f"id-{i}"


def test_retiring_a_worker_that_never_wrote_leaves_the_files_alone(tmp_path) -> None:
    """A worker that died before its first snapshot: nothing to fold; its half-written file is removed."""
    d = str(tmp_path)
    shared.write(d, shared.worker_file(11), _snap(1, 11, _metrics(2)))
    (tmp_path / f".{shared.worker_file(10)}.10.tmp").write_bytes(b'{"worker": 0, "met')
    shared.retire(d, 10, 1)
    assert sorted(os.listdir(d)) == ["worker-11.json"]
