"""Tracing and opt-in response extras end to end (docs/operations.md, tracing)."""

from __future__ import annotations

import re

from tests.backends import backend
from tests.integration.helpers import request, wait_for

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_reaches_backend_and_log(gateway_factory) -> None:
    """A valid traceparent (and tracestate) pass unchanged; the access log and recent carry trace_id."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, _, _ = request(gw.port, "GET", "/api/service1/x", headers={"traceparent": VALID, "tracestate": "a=1"})
        assert status == 200
        seen = be.seen[-1]
        assert seen.all("traceparent") == [VALID] and seen.header("tracestate") == "a=1"
        status, _, _ = request(gw.port, "GET", "/api/service1/y")  # no traceparent: minted
        minted = be.seen[-1].header("traceparent")
        assert minted and re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", minted)
        # the log line is written just after the response
        assert wait_for(lambda: len([r for r in gw.log.access() if r["service"] == "service1"]) == 2), gw.log.lines
        logs = [r for r in gw.log.access() if r["service"] == "service1"]
        assert logs[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert logs[1]["trace_id"] == minted.split("-")[1]


def test_server_timing_is_opt_in(gateway_factory) -> None:
    """GATEWAY_SERVER_TIMING=on adds Server-Timing: gateway;dur=<ms>, upstream;dur=<ms>; off by default."""
    with backend() as be:
        off = gateway_factory(SERVICE1_URL=be.url)
        _, headers, _ = request(off.port, "GET", "/api/service1/x")
        assert headers.get("Server-Timing") is None
        on = gateway_factory(SERVICE1_URL=be.url, GATEWAY_SERVER_TIMING="on")
        _, headers, _ = request(on.port, "GET", "/api/service1/x")
        assert re.fullmatch(r"gateway;dur=-?\d+\.\d{3}, upstream;dur=\d+\.\d{3}", headers["Server-Timing"])


def test_location_rewrite_is_opt_in(gateway_factory) -> None:
    """GATEWAY_REWRITE_LOCATION=on rewrites a backend redirect to keep the /api/<name> prefix."""
    with backend() as be:
        on = gateway_factory(SERVICE1_URL=be.url, GATEWAY_REWRITE_LOCATION="on")
        _, headers, _ = request(on.port, "GET", "/api/service1/redirect?to=/api/orders/7")
        assert headers["Location"] == "/api/service1/orders/7"
        off = gateway_factory(SERVICE1_URL=be.url)
        _, headers, _ = request(off.port, "GET", "/api/service1/redirect?to=/api/orders/7")
        assert headers["Location"] == "/api/orders/7"
