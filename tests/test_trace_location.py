"""W3C traceparent handling and the opt-in Location rewrite (docs/operations.md: tracing, GATEWAY_REWRITE_LOCATION)."""

from __future__ import annotations

import re

import pytest

from gateway.headers import rewrite_location, trace_context

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MINTED = re.compile(rb"00-([0-9a-f]{32})-[0-9a-f]{16}-01\Z")


def items(*values: bytes) -> list[tuple[bytes, bytes, bytes]]:
    return [(b"traceparent", b"traceparent", v) for v in values]


def test_valid_traceparent_is_kept() -> None:
    """A valid W3C traceparent keeps its trace id on the way upstream."""
    assert trace_context(items(VALID)) == (VALID, b"4bf92f3577b34da6a3ce929d0e0e4736")


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"garbage",
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        VALID + b"-extra",  # version 00 has exactly four fields
    ],
)
def test_invalid_traceparent_is_replaced(bad: bytes) -> None:
    """Without a valid traceparent the gateway sends a new 00-<32 hex>-<16 hex>-01."""
    value, trace_id = trace_context(items(bad))
    m = MINTED.match(value)
    assert m is not None and m.group(1) == trace_id and value != bad


def test_missing_or_repeated_traceparent_mints_a_new_one() -> None:
    """None, or two (ambiguous): a fresh one each time."""
    a, _ = trace_context([])
    b, _ = trace_context(items(VALID, VALID))
    assert MINTED.match(a) and MINTED.match(b) and a != b


def test_future_version_with_extra_fields_is_kept() -> None:
    """W3C 3.2.4: a higher version may carry more fields; the known prefix is parsed."""
    future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever"
    assert trace_context(items(future))[0] == future


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (b"/api/orders/7", b"/api/service1/orders/7"),
        (b"/api", b"/api/service1"),
        (b"/api?page=2", b"/api/service1?page=2"),
        (b"http://127.0.0.1:8001/api/orders/7", b"/api/service1/orders/7"),
        (b"http://127.0.0.1:8001", b"http://127.0.0.1:8001"),  # the root is not under /api
        (b"http://other:8001/api/orders", b"http://other:8001/api/orders"),  # another origin
        (b"/apix/orders", b"/apix/orders"),  # not a whole segment
        (b"/health", b"/health"),  # outside /api
        (b"//evil.example/api/x", b"//evil.example/api/x"),  # scheme-relative: untouched
        (b"orders/7", b"orders/7"),  # relative path: untouched
    ],
)
def test_location_rewrite(location: bytes, expected: bytes) -> None:
    """GATEWAY_REWRITE_LOCATION=on turns a backend Location of /api/<rest> (relative,
    or absolute on the backend's own origin) into /api/<name>/<rest>."""
    assert rewrite_location(location, b"http://127.0.0.1:8001", b"/api", b"/api/service1") == expected
