"""The results: the environment they were taken in, and the Markdown table from a results JSON."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
from typing import Any

from benchmarks.load import Row
from benchmarks.targets import ROOT, TARGET_LABELS, nginx_path


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("h11", "uvloop", "aiohttp", "httpx", "fastapi", "starlette", "uvicorn", "matplotlib"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    ng = nginx_path()
    if ng:
        p = subprocess.run([ng, "-v"], capture_output=True, text=True)
        out["nginx"] = (p.stderr or p.stdout).strip().split("/")[-1]
    p = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    m = re.search(r"wrk (\S+)", p.stdout + p.stderr)
    if m:
        out["wrk"] = m.group(1)
    return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway"], cwd=ROOT, capture_output=True,
                               text=True)
        git = {"commit": head.stdout.strip(), "gateway_dirty": bool(dirty.stdout.strip())}
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "git": git,
    }



def _ms(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def markdown(report: dict[str, Any]) -> str:
    floor = report["h11_floor"]
    rows = [Row(**r) for r in report["rows"]]
    meta = report["meta"]
    out = [
        f"# Benchmark results ({meta['mode']})",
        "",
        f"{meta['date']} · {meta['machine']['cpus']} × {meta['machine']['cpu_model']} · Linux "
        f"{meta['machine']['kernel']} · git {meta['machine']['git'].get('commit', '?')}"
        f"{' (gateway/ modified)' if meta['machine']['git'].get('gateway_dirty') else ''}",
        "",
        f"- {meta['pinning']}",
        f"- wrk {meta['versions'].get('wrk', '?')}, {meta['duration_s']:g} s per row, timeout "
        f"{meta['timeout_s']:g} s, {meta['wrk_threads']} wrk thread(s); large bodies and the POST at "
        "concurrency 10. Every proxy runs alone, one process, access log off (but in the gateway's "
        "\"access log on\" rows).",
        f"- h11 floor ({floor['h11_version']}, Python {floor['python']}): **{floor['floor_us']:.1f} µs** of CPU per "
        f"proxied request (server side {floor['server_us']:.1f} + client side {floor['client_us']:.1f}; median "
        f"{floor['floor_us_median']:.1f}; lower of "
        f"{len(report.get('h11_floor_runs', [floor]))} measurements: "
        f"{', '.join(str(f['floor_us']) for f in report.get('h11_floor_runs', [floor]))} µs).",
        "- Background CPU load before the run (other processes): "
        + ", ".join(f"CPU {c} {v:.0f}%" for c, v in meta.get("background_load_pct", {}).items())
        + "; the noise column is the CPU time other processes took on the proxy's core during each row.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
    ]
    if meta.get("skipped"):
        out.append("- Skipped: " + "; ".join(meta["skipped"]))
    out += [
        "",
        "| scenario | conc. | target | req/s | MB/s | p50 ms | p99 ms | +p50 ms | +p99 ms | errors (timeouts) "
        "| CPU µs/req | × h11 floor | CPU % | peak RSS MiB | noise % |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        mult = f"{r.floor_multiple:.2f}×" if r.floor_multiple is not None else "—"
        name = f"**{TARGET_LABELS[r.target]}**" if r.target == "gateway" else TARGET_LABELS[r.target]
        out.append(
            f"| {r.scenario} | {r.concurrency} | {name} | {r.rps:,.0f} | {r.mbps if r.mbps is not None else '—'} "
            f"| {_ms(r.p50_ms if r.requests else None)} | {_ms(r.p99_ms if r.requests else None)} "
            f"| {_ms(r.added_p50_ms, True)} | {_ms(r.added_p99_ms, True)} "
            f"| {r.errors} ({r.errors_detail['timeout'] + r.errors_detail.get('unanswered', 0)}) "
            f"| {r.cpu_us_per_req if r.cpu_us_per_req is not None else '—'} | {mult} "
            f"| {r.cpu_pct if r.cpu_pct is not None else '—'} "
            f"| {r.peak_rss_mib if r.peak_rss_mib is not None else '—'} "
            f"| {r.noise_pct if r.noise_pct is not None else '—'} |"
        )
    direct = [r for r in rows if r.target == "direct"]
    if direct:
        out += [
            "",
            "Load side (CPU of wrk + backend during the direct rows, % of one core): "
            + ", ".join(f"{r.scenario} c={r.concurrency}: {r.wrk_cpu_pct + (r.backend_cpu_pct or 0):.0f}%"
                        + (f" (+{r.extra['load_noise_pct']:.0f}% other processes)"
                           if r.extra.get("load_noise_pct") is not None else "")
                        for r in direct),
        ]
    gw = [r for r in rows if r.target == "gateway" and r.kind == "small" and r.extra.get("cpu_user_us_per_req")]
    if gw:
        out += [
            "",
            "Gateway CPU per small GET, user + system (kernel: sockets, epoll) µs: "
            + ", ".join(f"c={r.concurrency}: {r.extra['cpu_user_us_per_req']:.0f} + {r.extra['cpu_sys_us_per_req']:.0f}"
                        for r in gw),
        ]
    worst = [r for r in rows if r.errors]
    if worst:
        out += ["", "Errors by kind (wrk's connect, read, write, timeout = responses later than the timeout; "
                "status = responses ≥ 400; unanswered = connections that got no response in the whole row):", ""]
        for r in worst:
            d = ", ".join(f"{k} {v}" for k, v in r.errors_detail.items() if v)
            out.append(f"- {TARGET_LABELS[r.target]}, {r.scenario} c={r.concurrency}: {d}")
    if report.get("profile"):
        out += ["", "Gateway profile (py-spy, small GET c=100):", "", "```", report["profile"], "```"]
    out.append("")
    return "\n".join(out)

