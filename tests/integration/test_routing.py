"""Routing over loopback: docs/forwarding.md "Routing and forwarding" (plus the 404/405 rows of "Errors").

Every test runs a real gateway in front of real stdlib backends
(``tests/backends.py``) and checks what the backend received (``be.seen``)
as well as what the client got back.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest

from tests.backends import backend, free_port
from tests.integration.helpers import error_json, get_json, request, wait_for


def rfc3339(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no UTC offset"
    return parsed


def assert_not_found(status: int, headers: Any, body: bytes) -> dict[str, Any]:
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    doc = error_json(body)
    assert doc["error"] == "not_found"
    assert doc["status"] == 404
    assert doc["message"]
    assert headers["X-Request-ID"] == doc["request_id"]
    return doc


# --- routing, acceptance scenarios ----------------------------------------


def test_service1_orders_reaches_backend_api_orders(gateway_factory):
    """US1 scenario 1: `/api/service1/orders` is forwarded to service1's `/api/orders` and its response returned."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, headers, body = request(gw.port, "GET", "/api/service1/orders")
        assert status == 200
        assert headers["X-Backend"] == "echo"  # the backend's own response header came back
        doc = json.loads(body)
        assert doc["method"] == "GET"
        assert doc["target"] == "/api/orders"
        assert [s.target for s in be.seen] == ["/api/orders"]


def test_service2_notifications_send_reaches_service2_only(gateway_factory):
    """US1 scenario 2: `/api/service2/notifications/send` goes to service2's `/api/notifications/send`, not service1."""
    with backend() as be1, backend() as be2:
        gw = gateway_factory(GATEWAY_SERVICES="service1,service2", SERVICE1_URL=be1.url, SERVICE2_URL=be2.url)
        status, _, body = request(gw.port, "POST", "/api/service2/notifications/send", body=b'{"to":"x"}',
                                  headers={"Content-Type": "application/json"})
        assert status == 200
        assert json.loads(body)["target"] == "/api/notifications/send"
        assert [(s.method, s.target, s.body) for s in be2.seen] == [("POST", "/api/notifications/send", b'{"to":"x"}')]
        assert be1.seen == []
        # and service1 is still service1 on the same gateway
        status, doc = get_json(gw.port, "/api/service1/orders")
        assert status == 200 and doc["target"] == "/api/orders"
        assert [s.target for s in be1.seen] == ["/api/orders"]
        assert len(be2.seen) == 1


def test_post_json_body_headers_and_query_preserved(gateway_factory):
    """US1 scenario 3 / Forwarding: method, query, body and end-to-end headers pass unchanged (byte-exact)."""
    body = json.dumps({"item": "book", "qty": 2, "note": "caf\u00e9 \u2603"}, ensure_ascii=False).encode()
    sent_headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Authorization", "Bearer abc.def.ghi"),
        ("X-Custom", "  spaced value "),
        ("Accept", "application/json"),
        ("Cookie", "session=1; theme=dark"),
    ]
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, _, _ = request(gw.port, "POST", "/api/service1/orders?customer=42&tag=a&tag=b&empty=",
                               body=body, headers=sent_headers)
        assert status == 200
        (seen,) = be.seen
        assert seen.method == "POST"
        assert seen.target == "/api/orders?customer=42&tag=a&tag=b&empty="
        assert seen.body == body
        assert seen.header("Content-Length") == str(len(body))
        for name, value in sent_headers:
            # http.server strips surrounding whitespace of a value, so compare stripped
            assert seen.all(name) == [value.strip()], name


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 418, 422, 429, 500, 502, 503, 504])
def test_backend_error_status_and_body_returned_unchanged(gateway_factory, code):
    """US1 scenario 4 / Forwarding: the backend's 4xx/5xx status, headers and body reach the client unchanged."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, headers, body = request(gw.port, "GET", f"/api/service1/status/{code}")
        assert status == code
        # the backend's own body, not a gateway error document (same code numbers as 502/503/504!)
        assert json.loads(body) == {"status": code, "from": "backend"}
        assert headers["Content-Type"] == "application/json"
        assert headers["Content-Length"] == str(len(body))
        assert [s.target for s in be.seen] == [f"/api/status/{code}"]


# --- prefix replacement and segment matching --------------------------------


@pytest.mark.parametrize(
    ("target", "upstream_target"),
    [
        ("/api/service1?x=1", "/api?x=1"),
        ("/api/service1", "/api"),
        ("/api/service1/", "/api/"),
        ("/api/service1/orders?x=1", "/api/orders?x=1"),
        ("/api/service1?", "/api?"),
        ("/api/service1/?x", "/api/?x"),
    ],
)
def test_prefix_replaced_by_api(gateway_factory, target, upstream_target):
    """Routing: `/api/<name>` and `/api/<name>/<rest>` go to `<NAME>_URL` with the prefix replaced by `/api`."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, _, _ = request(gw.port, "GET", target)
        assert status == 200
        assert [s.target for s in be.seen] == [upstream_target]


def test_matching_is_by_whole_segments(gateway_factory):
    """Routing: matching is by whole path segments: `/api/service10/x` is not service1 (404, never forwarded)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        for target in ("/api/service10/x", "/api/service1x", "/api/service", "/api/servic", "/api/service1.json"):
            assert_not_found(*request(gw.port, "GET", target))
        assert be.seen == []


@pytest.mark.parametrize(
    "target",
    ["/api/service3/orders", "/api/service3", "/", "/api", "/api/", "/service1/orders", "/apiservice1/x", "/healthz"],
)
def test_unknown_path_is_404_json_with_request_id(gateway_factory, target):
    """Errors: no route -> 404 `not_found` in the contract's JSON shape; the response's X-Request-ID is the body's."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, headers, body = request(gw.port, "GET", target)
        assert_not_found(status, headers, body)
        assert be.seen == []


def test_unknown_service_keeps_client_request_id(gateway_factory):
    """Errors + Forwarding: a gateway-made 404 carries the client's valid X-Request-ID in body and header."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    status, headers, body = request(gw.port, "GET", "/api/service3/x", headers={"X-Request-ID": "req-404.abc"})
    doc = assert_not_found(status, headers, body)
    assert doc["request_id"] == "req-404.abc"


@pytest.mark.parametrize(
    ("target", "upstream_target"),
    [
        ("/api/service1/a%2Fb/../c;x?y=%20", "/api/a%2Fb/../c;x?y=%20"),
        ("/api/service1//double//slash/", "/api//double//slash/"),
        ("/api/service1/./dot/%2e%2e/x/.", "/api/./dot/%2e%2e/x/."),
        ("/api/service1/caf%C3%A9/%7euser~?q=caf%C3%A9&a=1&a=2&plus=a+b",
         "/api/caf%C3%A9/%7euser~?q=caf%C3%A9&a=1&a=2&plus=a+b"),
        ("/api/service1/x?q=a?b/c&&=&%zz", "/api/x?q=a?b/c&&=&%zz"),
        ("/api/service1/%41%42%2f%2F?%3F=%26", "/api/%41%42%2f%2F?%3F=%26"),
        ("/api/service1/p;matrix=1,2/q@x:y!$'()*", "/api/p;matrix=1,2/q@x:y!$'()*"),
        ("/api/service1/../service2/secret", "/api/../service2/secret"),
    ],
)
def test_odd_paths_forwarded_byte_for_byte(gateway_factory, target, upstream_target):
    """Routing: the path after the prefix and the query string are passed byte for byte (no decoding, re-encoding or
    normalising).
    """
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, _, body = request(gw.port, "GET", target)
        assert status == 200
        assert [s.target for s in be.seen] == [upstream_target]
        assert json.loads(body)["target"] == upstream_target


# --- gateway-owned endpoints ----------------------------------------------


def test_health_is_200_ok_json_and_not_forwarded(gateway_factory):
    """Health: `GET /health` is 200 `{"status": "ok", ...}` when serving; it never probes backends."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, headers, body = request(gw.port, "GET", "/health")
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["status"] == "ok"
        assert headers["X-Request-ID"]
        status, headers, body = request(gw.port, "HEAD", "/health")
        assert status == 200 and body == b""
        assert be.seen == [] and be.connections == 0


def test_health_ok_even_when_backends_are_down(gateway_factory):
    """US2 scenario 2 / Health: backend availability is not part of gateway health."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    status, doc = get_json(gw.port, "/health")
    assert status == 200 and doc["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/health"),
        ("PUT", "/health"),
        ("DELETE", "/health"),
        ("POST", "/api/gateway/services"),
        ("PATCH", "/api/gateway/status"),
        ("DELETE", "/api/gateway/metrics"),
    ],
)
def test_other_methods_on_gateway_endpoints_are_405(gateway_factory, method, target):
    """Routing/Errors: gateway-owned endpoints take GET and HEAD only; any other method is 405 `method_not_allowed`."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, headers, body = request(gw.port, method, target, body=b"{}")
        assert status == 405
        doc = error_json(body)
        assert doc["error"] == "method_not_allowed" and doc["status"] == 405
        assert headers["X-Request-ID"] == doc["request_id"]
        assert be.seen == []


def test_405_lists_allowed_methods(gateway_factory):
    """Errors: 405 on a gateway endpoint; RFC 9110 15.5.6: a 405 response MUST carry `Allow` (here GET, HEAD)."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    status, headers, _ = request(gw.port, "POST", "/health", body=b"")
    assert status == 405
    allow = headers.get("Allow")
    assert allow is not None, "405 without an Allow header"
    assert {m.strip() for m in allow.split(",")} >= {"GET", "HEAD"}


@pytest.mark.parametrize("target", ["/api/gateway/nope", "/api/gateway/nope/deeper", "/api/gateway/services/x",
                                    "/api/gateway/health"])
def test_unknown_gateway_endpoint_is_404_never_forwarded(gateway_factory, target):
    """Routing: `/api/gateway/*` is gateway-owned (`gateway` is reserved): an unknown one is 404, never forwarded."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        assert_not_found(*request(gw.port, "GET", target))
        assert be.seen == []


def test_services_endpoint_shape_and_state_from_traffic(gateway_factory):
    """Routing: `/api/gateway/services` is `{"services": [{name, prefix, upstream, state}]}`; state from real traffic
    only.
    """
    dead = f"http://127.0.0.1:{free_port()}"
    with backend() as be:
        gw = gateway_factory(GATEWAY_SERVICES="service1,service2", SERVICE1_URL=be.url, SERVICE2_URL=dead)
        status, doc = get_json(gw.port, "/api/gateway/services")
        assert status == 200
        assert set(doc) == {"services"}
        by_name = {s["name"]: s for s in doc["services"]}
        assert list(by_name) == ["service1", "service2"]
        for name, url in (("service1", be.url), ("service2", dead)):
            entry = by_name[name]
            assert {"name", "prefix", "upstream", "state"} <= set(entry)
            assert entry["prefix"] == f"/api/{name}"
            assert entry["upstream"].rstrip("/") == url
            # nothing has happened yet: no probing, so no state
            state = entry["state"]
            assert {k: state[k] for k in ("last_success", "last_error", "consecutive_failures")} == {
                "last_success": None,
                "last_error": None,
                "consecutive_failures": 0,
            }
            assert {k: state["pool"][k] for k in ("idle", "busy")} == {"idle": 0, "busy": 0}
        assert be.connections == 0, "the services endpoint must not probe backends"

        assert request(gw.port, "GET", "/api/service1/orders")[0] == 200
        assert request(gw.port, "GET", "/api/service2/x")[0] == 502
        assert request(gw.port, "GET", "/api/service2/x")[0] == 502

        def settled() -> dict[str, Any] | None:
            d = get_json(gw.port, "/api/gateway/services")[1]
            s = {e["name"]: e["state"] for e in d["services"]}
            ok = s["service1"]["last_success"] and s["service2"]["consecutive_failures"] == 2
            return s if ok and s["service1"]["pool"]["idle"] == 1 else None

        state = wait_for(settled)
        assert state, get_json(gw.port, "/api/gateway/services")[1]
        s1, s2 = state["service1"], state["service2"]
        assert abs(rfc3339(s1["last_success"]).timestamp() - time.time()) < 60
        assert s1["last_error"] is None and s1["consecutive_failures"] == 0
        assert (s1["pool"]["idle"], s1["pool"]["busy"]) == (1, 0)
        assert s2["last_success"] is None
        assert {"ts", "error", "status"} <= set(s2["last_error"])
        assert s2["last_error"]["error"] == "bad_gateway" and s2["last_error"]["status"] == 502
        rfc3339(s2["last_error"]["ts"])
        assert (s2["pool"]["idle"], s2["pool"]["busy"]) == (0, 0)


def test_services_endpoint_redacts_userinfo(gateway_factory):
    """Routing: `/api/gateway/services` shows upstream URLs with userinfo redacted (no user, no password)."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=f"http://alice:s3cr3tpw@127.0.0.1:{be.port}")
        # the route still works with userinfo in the URL
        assert request(gw.port, "GET", "/api/service1/orders")[0] == 200
        status, _, body = request(gw.port, "GET", "/api/gateway/services")
        assert status == 200
        assert b"s3cr3tpw" not in body
        assert b"alice" not in body
        (entry,) = json.loads(body)["services"]
        assert f"127.0.0.1:{be.port}" in entry["upstream"]
        # nor does the secret leak through the gateway's other views or its log lines
        for target in ("/api/gateway/status", "/api/gateway/recent"):
            assert b"s3cr3tpw" not in request(gw.port, "GET", target)[2], target
        # every request above (the forwarded one among them) has written its access line
        assert wait_for(lambda: len(gw.log.access()) >= 4), gw.log.lines
        assert any(r["path"].startswith("/api/service1/orders") for r in gw.log.access())
        assert not [line for line in gw.log.lines if b"s3cr3tpw" in line]


def test_new_backend_is_configuration_only(gateway_factory):
    """Configuration: a new backend is configuration only: `GATEWAY_SERVICES=service1,billing` plus `BILLING_URL` routes `/api/billing/*`."""
    with backend() as be1, backend() as billing:
        gw = gateway_factory(GATEWAY_SERVICES="service1,billing", SERVICE1_URL=be1.url, BILLING_URL=billing.url)
        status, doc = get_json(gw.port, "/api/billing/invoices?x=1")
        assert status == 200
        assert doc["target"] == "/api/invoices?x=1"
        (seen,) = billing.seen
        assert seen.header("X-Forwarded-Prefix") == "/api/billing"
        assert be1.seen == []
        names = [s["name"] for s in get_json(gw.port, "/api/gateway/services")[1]["services"]]
        assert names == ["service1", "billing"]
        # a service not listed is not routed even if its URL variable is set
        gw2 = gateway_factory(SERVICE1_URL=be1.url, BILLING_URL=billing.url)
        assert_not_found(*request(gw2.port, "GET", "/api/billing/invoices"))
        assert len(billing.seen) == 1
