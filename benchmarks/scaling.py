"""``--scaling``: req/s of the gateway with GATEWAY_WORKERS = 1, 2, ..., each worker on a core of its own."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.load import Scenario, run_wrk
from benchmarks.procfs import cpu_seconds
from benchmarks.targets import BENCH, HOST, free_port, spawn, start_target

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

