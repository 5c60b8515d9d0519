"""How many CPUs this process may use: ``GATEWAY_WORKERS=auto`` (docs/workers.md).

Read from the scheduler affinity and the cgroup CPU quota (v1 and v2), so a
container limited to 2 CPUs on a 64-core host runs 2 workers. No asyncio here.
"""

from __future__ import annotations

import math
import os


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup",
                affinity: int | None = None) -> tuple[int, str]:
    """CPUs this process may use, and why: its affinity (``sched_getaffinity``),
    capped by the cgroup CPU quota when one is set (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) on its own cgroup or an
    ancestor, rounded up, at least 1. The paths are parameters for tests."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count, reason = max(affinity, 1), f"cpu affinity: {affinity} cpus"
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None and math.ceil(quota) < count:
        count, reason = max(math.ceil(quota), 1), f"cgroup cpu quota: {quota:g} cpus (affinity {affinity})"
    return count, reason


def _cgroup_quota(root: str, proc_cgroup: str) -> float | None:
    """The smallest CPU quota (in CPUs) on this process' cgroup and its ancestors, or None."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        files: tuple[str, ...]
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":  # v2: "0::/path"
            dirs, files = [root], ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            dirs = [os.path.join(root, controllers), os.path.join(root, "cpu"), os.path.join(root, "cpu,cpuacct")]
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for base in dict.fromkeys(dirs):
            for depth in range(len(parts), -1, -1):  # own cgroup, then each ancestor
                quota = _read_quota(os.path.join(base, *parts[:depth]), files)
                if quota is not None:
                    quotas.append(quota)
    return min(quotas) if quotas else None


def _read_quota(directory: str, files: tuple[str, ...]) -> float | None:
    try:
        texts = []
        for name in files:
            with open(os.path.join(directory, name)) as f:
                texts.append(f.read().split())
    except OSError:
        return None
    try:
        if len(files) == 1:  # v2 cpu.max: "max 100000" or "150000 100000"
            quota_s, period_s = (texts[0] + ["100000"])[:2]
        else:
            quota_s, period_s = texts[0][0], texts[1][0]
        if quota_s == "max" or int(quota_s) <= 0 or int(period_s) <= 0:
            return None
        return int(quota_s) / int(period_s)
    except (ValueError, IndexError):
        return None
