"""The load: the scenarios, one bounded wrk run and its output, one measured row, the h11 floor."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.procfs import cpu_busy_seconds, cpu_seconds, cpu_times, peak_rss_mib, process_tree, reset_peak_rss
from benchmarks.targets import BENCH, ROOT, TARGET_LABELS, Server, pinned

MiB = 1024 * 1024


# --- what is measured ---------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    key: str  # selection name for --scenarios
    label: str
    kind: str  # "small", "bytes", "post"
    concurrency: int
    rest: str  # path after /api/ (direct) or /api/service1/ (proxies)
    body_bytes: int = 0  # POST body size


SCENARIOS = [
    *(Scenario("small", "small GET", "small", c, "small") for c in (1, 10, 100, 1000)),
    Scenario("1mib", "1 MiB GET", "bytes", 10, f"bytes/{MiB}"),
    Scenario("10mib", "10 MiB GET", "bytes", 10, f"bytes/{10 * MiB}"),
    Scenario("post", "64 KiB POST", "post", 10, "echo-len", 64 * 1024),
]
STRESS_CONCURRENCY = 1000  # run last for each target: a proxy it leaves broken spoils no other row


# --- wrk ----------------------------------------------------------------------
def wrk_script(scenario: Scenario, tmp: Path) -> Path:
    parts = []
    if scenario.kind == "post":
        parts.append((BENCH / "wrk" / "post.lua").read_text())
    parts.append((BENCH / "wrk" / "report.lua").read_text())
    path = tmp / f"wrk-{scenario.kind}.lua"
    path.write_text("\n".join(parts))
    return path


def run_wrk(url: str, scenario: Scenario, *, duration: float, timeout: float, cpu: int | set[int] | None, tmp: Path,
            threads: int) -> tuple[dict[str, Any], float]:
    """One bounded wrk run; its figures (from report.lua) and wrk's own CPU seconds."""
    cmd = [
        "wrk", f"-t{min(threads, scenario.concurrency)}", f"-c{scenario.concurrency}", f"-d{duration:g}s",
        f"--timeout={timeout:g}s", "--latency", "-s", str(wrk_script(scenario, tmp)), url,
    ]
    env = {**os.environ, "WRK_BODY_BYTES": str(scenario.body_bytes or 65536)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=pinned(cpu),
                          timeout=duration + timeout + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    data = parse_wrk_output(proc.stdout)
    if data is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    return data, wrk_cpu


def parse_wrk_output(stdout: str) -> dict[str, Any] | None:
    """The figures ``wrk/report.lua`` prints on its ``WRK_JSON`` line, with wrk's whole output as "text"."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data: dict[str, Any] = json.loads(line[len("WRK_JSON "):])
            data["text"] = stdout
            return data
    return None


# --- one row ------------------------------------------------------------------
@dataclass
class Row:
    target: str
    scenario: str
    kind: str
    concurrency: int
    requests: int
    duration_s: float
    rps: float
    mbps: float | None
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    errors_detail: dict[str, int]
    cpu_us_per_req: float | None  # of the proxy under test
    cpu_pct: float | None  # proxy CPU time / wall time, % of one core
    peak_rss_mib: float | None
    backend_cpu_us_per_req: float | None
    backend_cpu_pct: float | None
    wrk_cpu_pct: float
    noise_pct: float | None  # CPU time on the proxy's core not used by the proxy (other processes), %
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    floor_multiple: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def measure_row(target: str, scenario: Scenario, url: str, *, proxy: Server | None, backend: Server | None,
                args: argparse.Namespace, tmp: Path, load_cpu: int | None, threads: int) -> Row:
    proxy_pids = process_tree(proxy.proc.pid) if proxy else []
    backend_pids = [backend.proc.pid] if backend else []
    rss_reset = reset_peak_rss(proxy_pids) if proxy_pids else False
    l0, s0 = cpu_busy_seconds(load_cpu), cpu_seconds([os.getpid()])
    (pu0, ps0), b0, c0 = cpu_times(proxy_pids), cpu_seconds(backend_pids), cpu_busy_seconds(args.proxy_cpu)
    w, wrk_cpu = run_wrk(url, scenario, duration=args.duration, timeout=args.timeout, cpu=load_cpu, tmp=tmp,
                         threads=threads)
    (pu1, ps1), b1, c1 = cpu_times(proxy_pids), cpu_seconds(backend_pids), cpu_busy_seconds(args.proxy_cpu)
    l1, s1 = cpu_busy_seconds(load_cpu), cpu_seconds([os.getpid()])
    p0, p1 = pu0 + ps0, pu1 + ps1
    rss = peak_rss_mib(proxy_pids) if proxy_pids else None
    n = w["requests"]
    secs = w["duration_us"] / 1e6
    detail = {k: w[k] for k in ("connect", "read", "write", "timeout", "status")}
    # wrk 4 counts a timeout only when a late response finally arrives; a request
    # that never gets one is in no count. Fewer responses than connections means
    # at least that many connections waited the whole run: count them too.
    detail["unanswered"] = max(0, scenario.concurrency - n) if args.duration > args.timeout else 0
    if scenario.kind == "post":
        mbps = n * scenario.body_bytes / secs / 1e6
    elif scenario.kind == "bytes":
        mbps = w["bytes"] / secs / 1e6
    else:
        mbps = None
    return Row(
        target=target,
        scenario=scenario.label,
        kind=scenario.kind,
        concurrency=scenario.concurrency,
        requests=n,
        duration_s=round(secs, 3),
        rps=round(n / secs, 1),
        mbps=round(mbps, 1) if mbps is not None else None,
        p50_ms=w["p50_us"] / 1000,
        p75_ms=w["p75_us"] / 1000,
        p90_ms=w["p90_us"] / 1000,
        p99_ms=w["p99_us"] / 1000,
        p999_ms=w["p999_us"] / 1000,
        max_ms=w["lat_max_us"] / 1000,
        errors=sum(detail.values()),
        errors_detail=detail,
        cpu_us_per_req=round((p1 - p0) / n * 1e6, 1) if proxy and n else None,
        cpu_pct=round((p1 - p0) / secs * 100, 1) if proxy else None,
        peak_rss_mib=round(rss, 1) if rss is not None else None,
        backend_cpu_us_per_req=round((b1 - b0) / n * 1e6, 1) if backend and n else None,
        backend_cpu_pct=round((b1 - b0) / secs * 100, 1) if backend else None,
        wrk_cpu_pct=round(wrk_cpu / secs * 100, 1),
        noise_pct=round(max(0.0, (c1 - c0) - (p1 - p0)) / secs * 100, 1) if args.proxy_cpu is not None else None,
        extra={
            "rss_reset_per_row": rss_reset,
            # Like noise_pct, for the load core: CPU time there not used by wrk, the backend or this script.
            "load_noise_pct": round(max(0.0, (l1 - l0) - wrk_cpu - (b1 - b0) - (s1 - s0)) / secs * 100, 1)
            if load_cpu is not None and backend is not None else None,
            "cpu_user_us_per_req": round((pu1 - pu0) / n * 1e6, 1) if proxy and n else None,
            "cpu_sys_us_per_req": round((ps1 - ps0) / n * 1e6, 1) if proxy and n else None,
            "wrk_stdout": w["text"],
        },
    )


def fmt_row_line(r: Row) -> str:
    parts = [f"{TARGET_LABELS[r.target]:<14} {r.scenario:<11} c={r.concurrency:<5}",
             f"{r.rps:>9.0f} req/s"]
    if r.mbps is not None:
        parts.append(f"{r.mbps:>7.0f} MB/s")
    parts.append(f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms")
    late = r.errors_detail["timeout"] + r.errors_detail.get("unanswered", 0)
    parts.append(f"errors {r.errors}" + (f" (timeouts {late})" if late else ""))
    if r.target != "direct":
        cpu = f"{r.cpu_us_per_req:.0f} us/req" if r.cpu_us_per_req is not None else "- us/req"
        parts.append(f"CPU {cpu} ({r.cpu_pct:.0f}%)  peak RSS {r.peak_rss_mib:.1f} MiB")
    elif r.backend_cpu_pct is not None:
        parts.append(f"(backend CPU {r.backend_cpu_pct:.0f}%, wrk {r.wrk_cpu_pct:.0f}%)")
    if r.noise_pct is not None:
        parts.append(f"noise {r.noise_pct:.0f}%")
    return "  ".join(parts)


# --- the floor ----------------------------------------------------------------
def run_floor(cpu: int | None, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "h11_floor.py"), "--json"]
    if quick:
        cmd += ["--iterations", "2000", "--repeats", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pinned(cpu), cwd=ROOT, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"h11 floor failed: {proc.stderr}")
    floor: dict[str, Any] = json.loads(proc.stdout)
    return floor

