"""`gateway check` (CONTRACT.md, Extras): validate, probe each backend once, exit 0/1/2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.backends import backend, free_port

ROOT = Path(__file__).resolve().parents[2]


def run_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_all_backends_well_exit_0() -> None:
    """One line per backend with its keep-alive behaviour against the pool's idle expiry; exit 0."""
    with backend() as be:
        proc = run_check(GATEWAY_SERVICES="service1", SERVICE1_URL=be.url, GATEWAY_POOL_IDLE_TIMEOUT="0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ok") and "service1" in lines[0]
    assert "keep-alive" in lines[0] and "HTTP 200" in lines[0]


def test_a_backend_down_or_closing_idle_too_soon_exits_1() -> None:
    """A refused backend, and one closing idle connections before the pool's expiry, are problems: exit 1."""
    with backend(idle_close_s=0.3) as be:
        proc = run_check(
            GATEWAY_SERVICES="service1,service2",
            SERVICE1_URL=be.url,
            SERVICE2_URL=f"http://127.0.0.1:{free_port()}",
            GATEWAY_POOL_IDLE_TIMEOUT="2",
        )
    assert proc.returncode == 1
    by_name = {line.split()[1]: line for line in proc.stdout.strip().splitlines()}
    assert by_name["service1"].startswith("FAIL") and "GATEWAY_POOL_IDLE_TIMEOUT" in by_name["service1"]
    assert by_name["service2"].startswith("FAIL") and "cannot connect" in by_name["service2"]


def test_configuration_error_exits_2() -> None:
    """A bad configuration value: one line naming the variable, exit 2."""
    proc = run_check(GATEWAY_SERVICES="service1", SERVICE1_URL="nope")
    assert proc.returncode == 2 and "SERVICE1_URL" in proc.stderr
