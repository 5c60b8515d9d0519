"""CPU time, peak RSS and CPU noise of processes and cores, read from /proc (Linux only)."""

from __future__ import annotations

import contextlib
import os
import re
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx: master + worker; gateway: supervisor + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) seconds of these processes (all their threads), from /proc/<pid>/stat."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # field 14 of proc(5)
            system += int(fields[12])  # field 15
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes."""
    return sum(cpu_times(pids))


def peak_rss_mib(pids: list[int]) -> float:
    """Sum of VmHWM (peak resident set) over these processes, MiB."""
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


def cpu_busy_seconds(cpu: int | None) -> float:
    """Busy time of one CPU from /proc/stat (user, nice, system, irq, softirq, steal)."""
    if cpu is None:
        return 0.0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK
    return 0.0


def background_load(seconds: float = 1.0) -> dict[int, float]:
    """% busy of each CPU over ``seconds``, before we start anything (other users of the machine)."""
    def snap() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                m = re.match(r"cpu(\d+) (.*)", line)
                if m:
                    v = [int(x) for x in m.group(2).split()]
                    out[int(m.group(1))] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7], sum(v[:8]))
        return out

    a = snap()
    time.sleep(seconds)
    b = snap()
    return {c: round(100 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]), 1) for c in a if c in b}


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``), so each row has its own peak."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok

