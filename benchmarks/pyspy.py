"""Optional: py-spy on the gateway during an extra, unmeasured run (``--profile``), and its summary."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks.load import Scenario, run_wrk
from benchmarks.targets import ROOT, Server, pinned


def profile(server: Server, url: str, scenario: Scenario, args: argparse.Namespace, tmp: Path,
            load_cpu: int | None, threads: int, out: Path) -> str:
    """py-spy on the process under test during an extra, unmeasured wrk run."""
    pyspy = shutil.which("py-spy")
    if not pyspy:
        return "py-spy not found: no profile"
    raw = out.with_suffix(".txt")
    rec = subprocess.Popen(
        [pyspy, "record", "-p", str(server.proc.pid), "-d", f"{int(args.duration)}", "-r", "200", "-f", "raw",
         "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pinned(load_cpu),
    )
    time.sleep(0.5)
    run_wrk(url, scenario, duration=args.duration, timeout=args.timeout, cpu=load_cpu, tmp=tmp, threads=threads)
    rec.wait(args.duration + 30)
    if not raw.exists():
        return f"py-spy produced nothing: {rec.stderr.read().decode(errors='replace') if rec.stderr else ''}"
    return summarise_profile(raw)


def summarise_profile(raw: Path, top: int = 15) -> str:
    """Self and inclusive time per function (line numbers folded), and self time per module."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    by_module: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        leaf = frames[-1]
        self_t[leaf] = self_t.get(leaf, 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
        m = re.search(r"\(([^()]*)\)$", leaf)
        path = m.group(1) if m else "?"
        if path.startswith("h11/"):
            module = "h11"
        elif path.startswith("gateway/"):
            module = path
        elif path.startswith("asyncio/") or path.startswith("uvloop/"):
            module = "asyncio/uvloop (Python part; C event loop and syscalls show as Runner.run)"
        else:
            module = path.split("/")[0]
        by_module[module] = by_module.get(module, 0) + n
    if not total:
        return "profile: no samples"
    name = raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw
    lines = [f"profile: {total} samples, py-spy raw stacks in {name}", "self time by module:"]
    for mod, n in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n / total * 100:5.1f}%  {mod}")
    lines.append("self time by function:")
    for f, n in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n / total * 100:5.1f}%  {f}")
    lines.append("inclusive time (gateway functions):")
    gw = [(f, n) for f, n in incl.items() if "(gateway/" in f]
    for f, n in sorted(gw, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n / total * 100:5.1f}%  {f}")
    return "\n".join(lines)

