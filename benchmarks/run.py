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
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/run.py: make the benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.chart import chart
from benchmarks.load import SCENARIOS, STRESS_CONCURRENCY, Row, Scenario, fmt_row_line, measure_row, run_floor, run_wrk
from benchmarks.procfs import background_load
from benchmarks.pyspy import profile
from benchmarks.report import machine, markdown, versions
from benchmarks.scaling import scaling
from benchmarks.targets import (
    BENCH,
    HOST,
    ROOT,
    TARGETS,
    Server,
    available_targets,
    free_port,
    http_status,
    spawn,
    start_target,
)

RESULTS = BENCH / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Direct vs gateway vs peers, with wrk.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=None, help="whole seconds per row (5; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="short rows (~2 s), results to results/quick.*")
    p.add_argument("--only", default=",".join(TARGETS[1:]),
                   help=f"proxies to measure, comma-separated, from: {','.join(TARGETS[1:])} "
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
    proxy_cpu: int | None
    load_cpu: int | None
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
                # Not started by us: no process (stop() and the CPU figures skip a None proc).
                direct = Server("direct", None, upstream_port, tmp / "none", "/api/", host=upstream_host)  # type: ignore[arg-type]  # proc is None
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
            for running in started:
                running.stop()

    # The floor is the lower of the two measurements (before the rows, after the gateway's).
    floor = min(floor_runs, key=lambda f: f["floor_us"])
    if len(floor_runs) > 1:
        after = floor_runs[1]["floor_us"]
        print(f"h11 floor after the gateway's rows: {after:.1f} us; using {floor['floor_us']:.1f} us")
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
    chart_path: Path | None = png_path
    try:
        chart(report, png_path)
    except ImportError:
        print("benchmark: matplotlib not installed (uv sync --group bench): no chart", file=sys.stderr)
        chart_path = None
    print()
    print(md)
    print(f"results: {json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}"
          + (f", {chart_path.relative_to(ROOT)}" if chart_path else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
