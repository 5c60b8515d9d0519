"""A real Prometheus scrapes a two-worker gateway (docs/workers.md, Metrics; issue 11).

Debian's ``prometheus`` package (``.ci/run`` installs it) runs on loopback
with a temporary storage directory and a short scrape interval; the test asks
its HTTP API whether ``sum(gateway_requests_total)`` adds up to what was sent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.backends import backend, free_port
from tests.integration.helpers import request, wait_for
from tests.integration.test_workers import LAG_S, events, workers_process

PROMETHEUS = shutil.which("prometheus")
SCRAPE_S = 2  # snapshots are written every second: a scrape sees the one before it


def _query(port: int, expr: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.load(resp)
    except OSError:
        return None
    result = doc["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed (apt-get install prometheus)")
def test_prometheus_sums_every_workers_requests() -> None:
    """Prometheus, scraping a 2-worker gateway through one address, gets every request: the sum of
    gateway_requests_total is the N requests sent plus its own scrapes (each counted by the next one)."""
    assert PROMETHEUS is not None
    n = 50
    with backend() as be, workers_process(SERVICE1_URL=be.url) as (_, gw_port, log_path), \
            tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n"
            "scrape_configs:\n  - job_name: gateway\n    metrics_path: /api/gateway/metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{gw_port}']\n"
        )
        prom_port = free_port()
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            # Both workers listening (their start-up lines; a /health probe would be counted too).
            assert wait_for(lambda: len([e for e in events(log_path) if e["event"] == "started"]) == 2, LAG_S)
            for i in range(n):  # fresh connections: both workers take some
                assert request(gw_port, "GET", f"/api/service1/orders?i={i}")[0] == 200
            assert wait_for(lambda: _query(prom_port, 'sum(gateway_requests_total{service="service1"})') == n, 60), \
                _query(prom_port, 'sum(gateway_requests_total{service="service1"})')
            assert _query(prom_port, "count(count by (worker) (gateway_requests_total))") == 2
            # every request the gateway answered: the N, and Prometheus' scrapes before the latest one
            scrapes = 'count_over_time(up{job="gateway"}[1h])'
            accounted = f"sum(gateway_requests_total) - sum({scrapes})"
            wait_for(lambda: _query(prom_port, accounted) == n - 1, 30)
            value = _query(prom_port, accounted)
            assert value == n - 1, (value, _query(prom_port, "sum by (service, code) (gateway_requests_total)"))
            assert _query(prom_port, 'min_over_time(up{job="gateway"}[1h])') == 1
        finally:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(10)
