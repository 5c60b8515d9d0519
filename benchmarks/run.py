"""The gateway's benchmark: direct access vs the gateway vs the peers, in one run.

    uv run --frozen --group bench python -m benchmarks.run            # full run, ~4-5 min
    uv run --frozen --group bench python -m benchmarks.run --quick    # ~2 s per row
    uv run --frozen --group bench python -m benchmarks.run --only gateway,nginx

(``python benchmarks/run.py`` works too, with the project's venv active.)

Starts ``benchmarks/backend.py``, then measures every row against the backend
directly and through each proxy in turn (the gateway, the aiohttp and
FastAPI + httpx peers, nginx when installed), one proxy running at a time.
With two or more CPUs the proxy under test is pinned to the first and wrk +
the backend (+ this script) to the second, so rows compare per core. Writes
``benchmarks/results/benchmark.{json,md,png}`` (``quick.*`` with ``--quick``).
See ``benchmarks/README.md`` for what each column means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
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
TARGETS = ("direct", "gateway", "gateway-log", "aiohttp", "fastapi", "nginx")
TARGET_LABELS = {
    "direct": "direct",
    "gateway": "gateway",
    "gateway-log": "gateway, access log on",
    "aiohttp": "aiohttp proxy",
    "fastapi": "FastAPI+httpx",
    "nginx": "nginx",
}


# --- /proc --------------------------------------------------------------------
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


# --- processes ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | set[int] | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu} if isinstance(cpu, int) else cpu)


def http_status(port: int, path: str, host: str = HOST, timeout: float = 2.0) -> int | None:
    """One GET over a fresh connection; the status code, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else None
    except OSError:
        return None


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    prefix: str  # "/api/" (direct) or "/api/service1/"
    host: str = HOST

    def url(self, rest: str) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}{rest}"

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def wait_ready(self, path: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if http_status(self.port, path, self.host) == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer 200 on {path} within {timeout:g}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what we started
                self.proc.wait(5)


def spawn(name: str, cmd: list[str], *, cpu: int | set[int] | None, env: dict[str, str], logdir: Path, port: int,
          prefix: str) -> Server:
    log_path = logdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=pinned(cpu), start_new_session=True,
    )
    return Server(name, proc, port, log_path, prefix)


def start_target(name: str, *, cpu: int | set[int] | None, logdir: Path, upstream: tuple[str, int],
                 workers: int = 1) -> Server:
    port = free_port()
    up_host, up_port = upstream
    backend_url = f"http://{up_host}:{up_port}"
    py = sys.executable
    if name in ("gateway", "gateway-log"):
        env = {
            "GATEWAY_HOST": HOST,
            "GATEWAY_PORT": str(port),
            "GATEWAY_SERVICES": "service1",
            "SERVICE1_URL": backend_url,
            "GATEWAY_ACCESS_LOG": "off" if name == "gateway" else "on",  # on: one JSON line per request to stdout (a file)
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_WORKERS": str(workers),
        }
        return spawn(name, [py, "-m", "gateway"], cpu=cpu, env=env, logdir=logdir, port=port, prefix="/api/service1/")
    if name == "aiohttp":
        cmd = [py, str(BENCH / "peers" / "aiohttp_proxy.py"), "--port", str(port), "--backend", backend_url]
        return spawn(name, cmd, cpu=cpu, env={}, logdir=logdir, port=port, prefix="/api/service1/")
    if name == "fastapi":
        cmd = [py, str(BENCH / "peers" / "fastapi_httpx_proxy.py"), "--port", str(port), "--backend", backend_url]
        return spawn(name, cmd, cpu=cpu, env={}, logdir=logdir, port=port, prefix="/api/service1/")
    if name == "nginx":
        prefix_dir = logdir / "nginx"
        prefix_dir.mkdir(exist_ok=True)
        prefix_dir.chmod(0o755)
        logdir.chmod(0o755)  # nginx's worker may run as another user; it needs its temp dirs
        template = (BENCH / "peers" / "nginx.conf.template").read_text()
        user_line = "user root;" if os.geteuid() == 0 else ""
        conf = (
            template.replace("{prefix}", str(prefix_dir))
            .replace("{backend_hostport}", f"{up_host}:{up_port}")
            .replace("{port}", str(port))
            .replace("{user_line}", user_line)
        )
        conf_path = prefix_dir / "nginx.conf"
        conf_path.write_text(conf)
        cmd = [nginx_path() or "nginx", "-p", str(prefix_dir), "-c", str(conf_path), "-e", str(prefix_dir / "error.log")]
        return spawn(name, cmd, cpu=cpu, env={}, logdir=logdir, port=port, prefix="/api/service1/")
    raise ValueError(name)


def nginx_path() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)


# --- wrk ----------------------------------------------------------------------
def wrk_script(scenario: Scenario, tmp: Path) -> Path:
    parts = []
    if scenario.kind == "post":
        parts.append((BENCH / "wrk" / "post.lua").read_text())
    parts.append((BENCH / "wrk" / "report.lua").read_text())
    path = tmp / f"wrk-{scenario.kind}.lua"
    path.write_text("\n".join(parts))
    return path


def run_wrk(url: str, scenario: Scenario, *, duration: float, timeout: float, cpu: int | None, tmp: Path,
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
    for line in proc.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON "):])
            data["text"] = proc.stdout
            return data, wrk_cpu
    raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")


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
    return json.loads(proc.stdout)


# --- profiling (optional) -----------------------------------------------------
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


# --- environment --------------------------------------------------------------
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


def available_targets(wanted: list[str]) -> tuple[list[str], list[str]]:
    import importlib.util

    ok, skipped = [], []
    needs = {"aiohttp": ["aiohttp"], "fastapi": ["fastapi", "httpx", "uvicorn"]}
    for t in wanted:
        if t == "nginx" and not nginx_path():
            skipped.append("nginx: not installed (apt-get install nginx-light)")
        elif any(importlib.util.find_spec(m) is None for m in needs.get(t, [])):
            skipped.append(f"{t}: missing {', '.join(needs[t])} (uv sync --group bench)")
        else:
            ok.append(t)
    return ok, skipped


# --- reports ------------------------------------------------------------------
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


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [Row(**r) for r in report["rows"]]
    targets = [t for t in TARGETS if any(r.target == t for r in rows)]
    colors = {"direct": "#7f7f7f", "gateway": "#d62728", "gateway-log": "#ff9896", "aiohttp": "#1f77b4", "fastapi": "#2ca02c",
              "nginx": "#9467bd"}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    (ax_rps, ax_lat), (ax_cpu, ax_mb) = axes
    for i, t in enumerate(targets):
        small = sorted((r for r in rows if r.target == t and r.kind == "small"), key=lambda r: r.concurrency)
        if not small:
            continue
        cs = [r.concurrency for r in small]
        lw = 2.6 if t == "gateway" else 1.6
        kw = {"color": colors[t], "lw": lw, "marker": "o"}
        label = "direct (wrk + backend, one core)" if t == "direct" else TARGET_LABELS[t]
        ax_rps.plot(cs, [max(r.rps, 1) for r in small], label=label, **kw)
        answered = [r for r in small if r.requests]
        ax_lat.plot([r.concurrency for r in answered], [r.p50_ms for r in answered], **kw)
        ax_lat.plot([r.concurrency for r in answered], [r.p99_ms for r in answered], ls="--",
                    **{**kw, "marker": "^", "lw": lw * 0.8})
        if t != "direct":
            pts = [(c, r.cpu_us_per_req) for c, r in zip(cs, small, strict=True) if r.cpu_us_per_req]
            ax_cpu.plot([c for c, _ in pts], [v for _, v in pts], **kw)
        for r in small:
            late = r.errors_detail["timeout"] + r.errors_detail.get("unanswered", 0)
            if late:
                ax_rps.annotate(f"{late} timeouts", (r.concurrency, max(r.rps, 1)), textcoords="offset points",
                                xytext=(-60, 6 + 9 * i), fontsize=7, color=colors[t])
    floor_line = ax_cpu.axhline(report["h11_floor"]["floor_us"], color="black", ls=":", lw=1.5)
    for ax in (ax_rps, ax_lat, ax_cpu):
        ax.set_xscale("log")
        ax.set_xticks([1, 10, 100, 1000], ["1", "10", "100", "1000"])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.set_title("Small GET: throughput (the proxy has one core)")
    ax_rps.set_ylabel("requests / s (log)")
    ax_rps.set_yscale("log")
    ax_lat.set_title("Small GET: latency, p50 (solid ●) and p99 (dashed ▲)")
    ax_lat.set_ylabel("ms (log)")
    ax_lat.set_yscale("log")
    ax_cpu.set_title("Small GET: proxy CPU time per request")
    ax_cpu.set_ylabel("CPU µs / request (log)")
    ax_cpu.set_yscale("log")
    ax_cpu.legend([floor_line], [f"h11 floor {report['h11_floor']['floor_us']:.0f} µs"], fontsize=8, loc="lower right")
    big = [s for s in ("1 MiB GET", "10 MiB GET", "64 KiB POST") if any(r.scenario == s for r in rows)]
    width = 0.8 / max(len(targets), 1)
    for i, t in enumerate(targets):
        vals = []
        for s in big:
            r = next((r for r in rows if r.target == t and r.scenario == s), None)
            vals.append(r.mbps if r and r.mbps is not None else 0)
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(big))]
        bars = ax_mb.bar(xs, vals, width, label=TARGET_LABELS[t], color=colors[t])
        ax_mb.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    ax_mb.set_xticks(range(len(big)), [f"{s} (c=10)" for s in big])
    ax_mb.set_title("Large bodies: throughput")
    ax_mb.set_ylabel("MB/s")
    ax_mb.grid(True, axis="y", alpha=0.3)
    meta = report["meta"]
    fig.suptitle(
        f"gateway vs direct and peers — {meta['date']}, {meta['duration_s']:g} s/row, "
        f"{'proxy pinned to its own core' if meta['pinned'] else 'not pinned'}",
        fontsize=12,
    )
    handles, labels = ax_rps.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), bbox_to_anchor=(0.5, 0.965), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------
# --- scaling: the gateway with 1, 2, ... workers -------------------------------
LOAD_CPUS = 1  # wrk + the backend: one core keeps a 1-worker gateway busy (see the direct rows)


def scaling(args: argparse.Namespace) -> int:
    """req/s of the gateway with 1, 2, ... workers, each on a core of its own, and the
    efficiency per worker (req/s per worker / req/s of one). The load side keeps
    LOAD_CPUS cores; a row where they are saturated measures wrk, so it ends the table."""
    cpus = sorted(os.sched_getaffinity(0))
    gw_cpus, load = cpus[:-LOAD_CPUS], set(cpus[-LOAD_CPUS:])
    if len(gw_cpus) < 2:
        print(f"scaling: not measurable here: {len(cpus)} usable CPU(s); the load generator (wrk + backend) needs "
              f"{LOAD_CPUS}, which leaves {len(gw_cpus)} for the gateway. A figure for N workers needs N cores of "
              "their own besides the load side's; any number printed here would measure the shared cores, so none is.")
        return 0
    print(f"scaling: gateway workers on CPUs {gw_cpus}, wrk + backend on {sorted(load)}; small GET, "
          f"{args.duration} s per row")
    with tempfile.TemporaryDirectory(prefix="gw-scaling-") as tmpname:
        tmp = Path(tmpname)
        port = free_port()
        backend = spawn("backend", [sys.executable, str(BENCH / "backend.py"), "--port", str(port)],
                        cpu=load, env={}, logdir=tmp, port=port, prefix="/api/")
        try:
            backend.wait_ready("/api/small")
            base = 0.0
            print("| workers | req/s | req/s per worker | efficiency | load-side CPU % |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            for n in range(1, len(gw_cpus) + 1):
                gw = start_target("gateway", cpu=set(gw_cpus[:n]), logdir=tmp, upstream=(HOST, port), workers=n)
                try:
                    gw.wait_ready(gw.prefix + "small")
                    time.sleep(0.5 * n)  # every worker listening
                    sc = Scenario("small", "small GET", "small", 50 * n, "small")
                    run_wrk(gw.url("small"), sc, duration=1, timeout=args.timeout, cpu=load, tmp=tmp, threads=len(load))
                    b0 = cpu_seconds([backend.proc.pid])
                    w, wrk_cpu = run_wrk(gw.url("small"), sc, duration=args.duration, timeout=args.timeout, cpu=load,
                                         tmp=tmp, threads=len(load))
                    secs = w["duration_us"] / 1e6  # the load side's own CPU (wrk + backend), % of its cores:
                    load_pct = (wrk_cpu + cpu_seconds([backend.proc.pid]) - b0) / secs / len(load) * 100
                finally:
                    gw.stop()
                rps = w["requests"] / secs
                base = base or rps
                print(f"| {n} | {rps:,.0f} | {rps / n:,.0f} | {rps / n / base:.0%} | {load_pct:.0f} |", flush=True)
                if load_pct >= 90 and n < len(gw_cpus):
                    print(f"scaling: the load side was {load_pct:.0f}% busy with {n} workers: more workers would "
                          "measure wrk, not the gateway; stopping here")
                    break
        finally:
            backend.stop()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Direct vs gateway vs peers, with wrk.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=None, help="whole seconds per row (5; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="short rows (~2 s), results to results/quick.*")
    p.add_argument("--only", default=",".join(TARGETS[1:]),
                   help="proxies to measure, comma-separated, from: gateway,aiohttp,fastapi,nginx "
                        "(direct is always measured)")
    p.add_argument("--scenarios", default="small,1mib,10mib,post", help="from: small,1mib,10mib,post")
    p.add_argument("--concurrency", default="1,10,100,1000", help="small GET concurrencies")
    p.add_argument("--timeout", type=int, default=2, help="wrk per-request timeout, seconds (wrk's default)")
    p.add_argument("--upstream", default=None,
                   help="measure against your own backend http://HOST:PORT instead of benchmarks/backend.py "
                        "(small GET rows only, on --path)")
    p.add_argument("--path", default="/api/small", help="with --upstream: a GET path under /api/")
    p.add_argument("--profile", action="store_true",
                   help="also run py-spy on the gateway during an extra (unmeasured) small GET c=100 run")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="on a shared machine: wait up to this long for other processes' CPU use to drop below 15%%")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="only redraw the Markdown and PNG next to an existing results JSON (no load)")
    p.add_argument("--name", default=None, help="results file name (default: benchmark, or quick)")
    p.add_argument("--scaling", action="store_true",
                   help="only the workers figure: req/s with GATEWAY_WORKERS=1, 2, ... up to the usable CPUs")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2 if args.quick else 5
    if args.duration < 1 or args.timeout < 1:
        p.error("--duration and --timeout are whole seconds, at least 1 (wrk takes no fractions)")
    return args


def render(json_path: Path) -> None:
    report = json.loads(json_path.read_text())
    md_path, png_path = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    md_path.write_text(markdown(report))
    chart(report, png_path)
    print(f"rendered {md_path} and {png_path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        render(Path(args.render))
        return 0
    if not shutil.which("wrk"):
        print("benchmark: wrk is not installed; it is the load generator. Install it with\n"
              "    sudo apt-get install wrk      (Debian/Ubuntu; or build it from github.com/wg/wrk)\n"
              "and run this again.", file=sys.stderr)
        return 2
    if args.scaling:
        return scaling(args)
    wanted = [t.strip() for t in args.only.split(",") if t.strip() and t.strip() != "direct"]
    bad = [t for t in wanted if t not in TARGETS]
    if bad:
        print(f"benchmark: unknown target(s) {', '.join(bad)}; choose from {', '.join(TARGETS[1:])}", file=sys.stderr)
        return 2
    targets, skipped = available_targets(wanted)
    keys = {s.strip() for s in args.scenarios.split(",")}
    concs = {int(c) for c in args.concurrency.split(",")}
    scenarios = [s for s in SCENARIOS if s.key in keys and (s.kind != "small" or s.concurrency in concs)]
    upstream_host, upstream_port = HOST, 0
    if args.upstream:
        m = re.fullmatch(r"http://([^/:]+|\[[^\]]+\]):(\d+)/?", args.upstream)
        if not m or not args.path.startswith("/api/"):
            print("benchmark: --upstream must be http://HOST:PORT and --path start with /api/", file=sys.stderr)
            return 2
        upstream_host, upstream_port = m.group(1).strip("[]"), int(m.group(2))
        scenarios = [Scenario("small", f"GET {args.path}", "small", s.concurrency, args.path[len('/api/'):])
                     for s in scenarios if s.kind == "small"]

    probe_rest = args.path[len("/api/"):] if args.upstream else "small"  # readiness check and warm-up
    table_order = list(scenarios)
    scenarios.sort(key=lambda s: s.concurrency >= STRESS_CONCURRENCY)  # stable: the stress row goes last
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        proxy_cpu, load_cpu = cpus[0], cpus[1]
        pinning = (f"pinned: the proxy under test on CPU {proxy_cpu}; wrk, the backend and this script on "
                   f"CPU {load_cpu}")
        os.sched_setaffinity(0, {load_cpu})
        threads = 1  # wrk shares one core with the backend: more threads only add switches
    else:
        proxy_cpu = load_cpu = None
        pinning = "not pinned: only one CPU, so proxy, wrk and backend share it (rows are not per core)"
        threads = 1
    args.proxy_cpu = proxy_cpu
    mode = "quick" if args.quick else "full"
    name = args.name or ("quick" if args.quick else "benchmark")
    total_rows = len(scenarios) * (1 + len(targets))
    print(f"benchmark: {pinning}")
    print(f"benchmark: {len(scenarios)} scenarios x {1 + len(targets)} targets (direct, {', '.join(targets)}), "
          f"{args.duration:g} s per row: about {total_rows * (args.duration + 0.7) + 15 + 6 * len(targets):.0f} s")
    for s in skipped:
        print(f"benchmark: skipping {s}")

    deadline = time.monotonic() + args.wait_quiet
    while True:
        load = background_load(2.0)
        busiest = max(load.values(), default=0.0)
        if busiest < 15 or time.monotonic() >= deadline:
            break
        print(f"benchmark: waiting for a quieter machine (CPU busy: "
              f"{', '.join(f'{c}: {v:.0f}%' for c, v in load.items())})", flush=True)
    print(f"benchmark: background load before start: "
          f"{', '.join(f'CPU {c} {v:.0f}%' for c, v in load.items())}"
          + ("  (other processes are busy: figures will be noisy; see the noise column)" if busiest >= 15 else ""))

    RESULTS.mkdir(parents=True, exist_ok=True)
    floor = run_floor(proxy_cpu, args.quick)
    floor_runs = [floor]
    print(f"h11 floor: {floor['floor_us']:.1f} us CPU per proxied request (server {floor['server_us']:.1f} + client "
          f"{floor['client_us']:.1f}; median {floor['floor_us_median']:.1f}; pinned to the proxy's CPU)")

    rows: list[Row] = []
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmpname:
        tmp = Path(tmpname)
        backend: Server | None = None
        started: list[Server] = []
        try:
            if not args.upstream:
                upstream_port = free_port()
                backend = spawn("backend", [sys.executable, str(BENCH / "backend.py"), "--port", str(upstream_port)],
                                cpu=load_cpu, env={}, logdir=tmp, port=upstream_port, prefix="/api/")
                started.append(backend)
                backend.wait_ready("/api/small")
                direct = backend
            else:
                direct = Server("direct", None, upstream_port, tmp / "none", "/api/", host=upstream_host)  # type: ignore[arg-type]
                if http_status(upstream_port, args.path, upstream_host) != 200:
                    print(f"benchmark: {args.upstream}{args.path} does not answer 200", file=sys.stderr)
                    return 1
            # Warm up the load side, then the direct rows.
            run_wrk(direct.url(probe_rest), Scenario("w", "warm-up", "small", 10, probe_rest), duration=1,
                    timeout=args.timeout, cpu=load_cpu, tmp=tmp, threads=threads)
            for sc in scenarios:
                row = measure_row("direct", sc, direct.url(sc.rest), proxy=None, backend=backend, args=args, tmp=tmp,
                                  load_cpu=load_cpu, threads=threads)
                rows.append(row)
                print(fmt_row_line(row), flush=True)
                time.sleep(0.3)
            for target in targets:
                server = start_target(target, cpu=proxy_cpu, logdir=tmp, upstream=(upstream_host, upstream_port))
                started.append(server)
                try:
                    server.wait_ready(server.prefix + probe_rest)
                    # Warm-up (unmeasured): imports done, pool connections open, code paths hot.
                    run_wrk(server.url(probe_rest), Scenario("w", "warm-up", "small", 10, probe_rest),
                            duration=1, timeout=args.timeout, cpu=load_cpu, tmp=tmp, threads=threads)
                    for sc in scenarios:
                        row = measure_row(target, sc, server.url(sc.rest), proxy=server, backend=backend, args=args,
                                          tmp=tmp, load_cpu=load_cpu, threads=threads)
                        rows.append(row)
                        print(fmt_row_line(row), flush=True)
                        if server.proc.poll() is not None:
                            raise RuntimeError(f"{target} died during {sc.label}:\n{server.tail()}")
                        time.sleep(0.3)
                    if target == "gateway":
                        # Again, right after the gateway's rows, under the same machine conditions.
                        floor_runs.append(run_floor(proxy_cpu, args.quick))
                    if args.profile and target == "gateway":
                        sc = Scenario("small", "small GET", "small", 100, probe_rest)
                        profile_text = profile(server, server.url(sc.rest), sc, args, tmp, load_cpu, threads,
                                               RESULTS / f"{name}-gateway-profile")
                        print(profile_text, flush=True)
                except Exception as exc:  # one failing proxy must not lose the others' rows
                    print(f"benchmark: {target} failed: {exc}", file=sys.stderr)
                    skipped.append(f"{target}: failed ({str(exc).splitlines()[0]})")
                finally:
                    server.stop()
                    started.remove(server)
        finally:
            for s in started:
                s.stop()

    # The floor is the lower of the two measurements (before the rows, after the gateway's).
    floor = min(floor_runs, key=lambda f: f["floor_us"])
    if len(floor_runs) > 1:
        print(f"h11 floor after the gateway's rows: {floor_runs[1]['floor_us']:.1f} us; using {floor['floor_us']:.1f} us")
    # Derived columns: added latency vs direct, multiple of the h11 floor.
    direct_rows = {(r.scenario, r.concurrency): r for r in rows if r.target == "direct"}
    for r in rows:
        d = direct_rows.get((r.scenario, r.concurrency))
        if r.target != "direct" and d is not None and r.requests and d.requests:
            r.added_p50_ms = round(r.p50_ms - d.p50_ms, 3)
            r.added_p99_ms = round(r.p99_ms - d.p99_ms, 3)
        if r.kind == "small" and r.cpu_us_per_req is not None:
            r.floor_multiple = round(r.cpu_us_per_req / floor["floor_us"], 2)
    order = {t: i for i, t in enumerate(TARGETS)}
    scen_order = {(s.label, s.concurrency): i for i, s in enumerate(table_order)}
    rows.sort(key=lambda r: (scen_order.get((r.scenario, r.concurrency), 99), order[r.target]))

    report = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": mode,
            "duration_s": args.duration,
            "timeout_s": args.timeout,
            "wrk_threads": threads,
            "pinned": proxy_cpu is not None,
            "pinning": pinning,
            "proxy_cpu": proxy_cpu,
            "load_cpu": load_cpu,
            "upstream": args.upstream,
            "background_load_pct": load,
            "machine": machine(),
            "versions": versions(),
            "skipped": skipped,
            "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "h11_floor": floor,
        "h11_floor_runs": floor_runs,
        "rows": [r.__dict__ for r in rows],
        "profile": profile_text,
    }
    json_path, md_path, png_path = (RESULTS / f"{name}.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    md_path.write_text(md)
    try:
        chart(report, png_path)
    except ImportError:
        print("benchmark: matplotlib not installed (uv sync --group bench): no chart", file=sys.stderr)
        png_path = None  # type: ignore[assignment]
    print()
    print(md)
    print(f"results: {json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}"
          + (f", {png_path.relative_to(ROOT)}" if png_path else ""))
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
