"""`gateway check` (docs/operations.md, Pre-flight): validate, probe each backend once, exit 0/1/2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import backend, close_at_once, free_port, garbage, raw_server

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


def test_a_backend_closing_without_an_answer_or_sending_garbage_exits_1() -> None:
    """Each problem named on its backend's line."""
    with raw_server(close_at_once) as closing, raw_server(garbage) as bad:
        proc = run_check(
            GATEWAY_SERVICES="service1,service2",
            SERVICE1_URL=f"http://127.0.0.1:{closing}",
            SERVICE2_URL=f"http://127.0.0.1:{bad}",
        )
    assert proc.returncode == 1
    by_name = {line.split()[1]: line for line in proc.stdout.strip().splitlines()}
    assert by_name["service1"].startswith("FAIL") and "without a response" in by_name["service1"]
    assert by_name["service2"].startswith("FAIL") and "invalid or broken response" in by_name["service2"]


def test_configuration_error_exits_2() -> None:
    """A bad configuration value: one line naming the variable, exit 2."""
    proc = run_check(GATEWAY_SERVICES="service1", SERVICE1_URL="nope")
    assert proc.returncode == 2 and "SERVICE1_URL" in proc.stderr


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_backend_gets_a_bracketed_host_header() -> None:
    """`gateway check` against http://[::1]:port sends `Host: [::1]:port` (RFC 3986 3.2.2), not `::1:port`."""
    with backend(host="::1") as be:
        proc = run_check(GATEWAY_SERVICES="service1", SERVICE1_URL=f"http://[::1]:{be.port}", GATEWAY_POOL_IDLE_TIMEOUT="0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [seen.header("Host") for seen in be.seen] == [f"[::1]:{be.port}"]
