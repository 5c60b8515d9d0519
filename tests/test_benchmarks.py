"""The benchmark harness's pure parts: wrk's output, the Markdown report (no load, no processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.load import Row, fmt_row_line, parse_wrk_output
from benchmarks.pyspy import summarise_profile
from benchmarks.report import markdown
from benchmarks.targets import TARGET_COLORS, TARGET_LABELS, TARGETS

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

WRK_STDOUT = """Running 2s test @ http://127.0.0.1:40000/api/service1/small
  1 threads and 10 connections
  8551 requests in 2.00s, 1.43MB read
Requests/sec:   4275.50
WRK_JSON {"requests":8551,"duration_us":2000000,"bytes":1496425,"connect":0,"read":1,"write":0,"status":2,\
"timeout":3,"lat_mean_us":620.8,"lat_max_us":8302,"p50_us":501,"p75_us":623,"p90_us":1246,"p99_us":1863,\
"p999_us":4207}
"""


def test_wrk_output_is_read_from_the_report_line() -> None:
    data = parse_wrk_output(WRK_STDOUT)
    assert data is not None
    assert data["requests"] == 8551
    assert (data["p50_us"], data["p99_us"], data["lat_max_us"]) == (501, 1863, 8302)
    assert (data["read"], data["status"], data["timeout"]) == (1, 2, 3)
    assert data["text"] == WRK_STDOUT  # wrk's own output is kept for the JSON


def test_wrk_output_without_the_report_line_is_none() -> None:
    assert parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n") is None


def _row(target: str, **kw: Any) -> dict[str, Any]:
    row = {
        "target": target, "scenario": "small GET", "kind": "small", "concurrency": 10, "requests": 1000,
        "duration_s": 2.0, "rps": 500.0, "mbps": None, "p50_ms": 1.5, "p75_ms": 2.0, "p90_ms": 2.5, "p99_ms": 4.0,
        "p999_ms": 5.0, "max_ms": 6.0, "errors": 0,
        "errors_detail": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0, "unanswered": 0},
        "cpu_us_per_req": None, "cpu_pct": None, "peak_rss_mib": None, "backend_cpu_us_per_req": 20.0,
        "backend_cpu_pct": 40.0, "wrk_cpu_pct": 50.0, "noise_pct": 1.0, "extra": {"load_noise_pct": 2.0},
    }
    return {**row, **kw}


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    floor = {"h11_version": "0.16.0", "python": "3.11.7", "server_us": 40.0, "client_us": 40.0, "floor_us": 80.0,
             "floor_us_median": 85.0}
    return {
        "meta": {
            "date": "2026-12-02 06:00 UTC", "mode": "quick", "duration_s": 2, "timeout_s": 2, "wrk_threads": 1,
            "pinned": True, "pinning": "pinned: test", "background_load_pct": {"0": 3.0, "1": 4.0},
            "machine": {"cpus": 2, "cpu_model": "Test CPU", "kernel": "6.0", "git": {"commit": "abc1234"}},
            "versions": {"python": "3.11.7", "wrk": "4.2.0"}, "skipped": ["nginx: not installed"],
        },
        "h11_floor": floor,
        "rows": rows,
        "profile": "",
    }


def test_markdown_renders_one_table_line_per_row() -> None:
    gateway = _row("gateway", rps=2500.4, cpu_us_per_req=160.0, cpu_pct=99.5, peak_rss_mib=27.1,
                   added_p50_ms=1.25, added_p99_ms=-0.5, floor_multiple=2.0, errors=3,
                   errors_detail={"connect": 0, "read": 0, "write": 0, "timeout": 2, "status": 0, "unanswered": 1},
                   extra={"cpu_user_us_per_req": 120.0, "cpu_sys_us_per_req": 40.0})
    md = markdown(_report([_row("direct"), gateway]))
    assert md.startswith("# Benchmark results (quick)\n")
    assert "- Skipped: nginx: not installed" in md
    lines = md.splitlines()
    assert "| small GET | 10 | direct | 500 | — | 1.50 | 4.00 | — | — | 0 (0) | — | — | — | — | 1.0 |" in lines
    assert ("| small GET | 10 | **gateway** | 2,500 | — | 1.50 | 4.00 | +1.25 | -0.50 | 3 (3) | 160.0 | 2.00× "
            "| 99.5 | 27.1 | 1.0 |") in lines
    assert "small GET c=10: 90% (+2% other processes)" in md  # load side: wrk 50 + backend 40
    assert "c=10: 120 + 40" in md
    assert "- gateway, small GET c=10: timeout 2, unanswered 1" in lines


def test_the_committed_results_render_to_the_committed_markdown() -> None:
    report = json.loads((RESULTS / "benchmark.json").read_text())
    assert markdown(report) == (RESULTS / "benchmark.md").read_text()


def test_progress_line_of_a_row() -> None:
    line = fmt_row_line(Row(**_row("gateway", cpu_us_per_req=160.0, cpu_pct=99.5, peak_rss_mib=27.1)))
    assert line.startswith("gateway        small GET   c=10 ")
    assert "CPU 160 us/req (100%)  peak RSS 27.1 MiB" in line


def test_every_target_has_a_label_and_a_colour() -> None:
    assert TARGETS[0] == "direct"
    assert set(TARGET_LABELS) == set(TARGETS) == set(TARGET_COLORS)


def test_profile_summary_folds_line_numbers_and_groups_by_module(tmp_path: Path) -> None:
    raw = tmp_path / "gateway-profile.txt"
    raw.write_text(
        "run (asyncio/runners.py:118);data_received (gateway/protocol.py:90);next_event (h11/_connection.py:470) 3\n"
        "run (asyncio/runners.py:118);data_received (gateway/protocol.py:95) 1\n"
    )
    text = summarise_profile(raw)
    assert text.startswith(f"profile: 4 samples, py-spy raw stacks in {raw}\n")
    assert "   75.0%  h11\n" in text
    assert "   25.0%  gateway/protocol.py\n" in text
    assert "  100.0%  data_received (gateway/protocol.py)" in text  # inclusive, both lines folded into one
