"""Router properties (docs/forwarding.md, Routing and forwarding): whole segments, longest prefix, bytes untouched.

In the style of h2's ``test_invalid_headers.py``: hypothesis generates raw
request-targets and every property is checked against a small model of the
contract, never against the router's own helpers. Routes are always built the
way the gateway builds them: ``config.from_env`` and routes files.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.api import Match, Router
from gateway.config import ConfigError, from_env, load_routes_file

# ---------------------------------------------------------------- strategies

# Any bytes but '?', which would start the query.
no_query_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"?", b""))
# The rest after a prefix: nothing, or "/" and then anything (segments, "..",
# "//", "%2F", NUL, non-ASCII ...).
rest_strategy = st.one_of(st.just(b""), no_query_bytes.map(lambda b: b"/" + b))
# The query, with its "?", and then arbitrary bytes (another "?" included).
query_strategy = st.one_of(st.just(b""), st.binary(max_size=40).map(lambda b: b"?" + b))
# Bytes glued onto a segment so that it becomes a different, longer segment.
segment_tail = no_query_bytes.filter(lambda b: b != b"" and b[:1] != b"/")

_tmp = Path(tempfile.mkdtemp(prefix="gateway-test-api-"))
atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
_counter = itertools.count()


def write_routes(text: str) -> str:
    path = _tmp / f"routes-{next(_counter)}.toml"
    path.write_text(text)
    return str(path)


def router_from_env(**env: str) -> Router:
    return Router(from_env(env).routes)


def route_name(m: Match | None) -> str | None:
    return None if m is None or m.route is None else m.route.name


# Built once: hypothesis examples share them (they are immutable).
ENV_ROUTER = router_from_env(GATEWAY_SERVICES="service1,service2,service10")
NESTED_FILE = write_routes(
    """
[[route]]
prefix = "/api/a"
name = "short"
upstream = "http://a.internal:8000/one"

[[route]]
prefix = "/api/a/b"
name = "long"
upstream = "http://b.internal:8000/two"

[[route]]
prefix = "/api"
name = "catchall"
upstream = "http://catchall:8000"
"""
)
NESTED_ROUTER = router_from_env(GATEWAY_SERVICES="service1", GATEWAY_CONFIG=NESTED_FILE)


# ------------------------------------------------------ whole-segment matching


@given(rest=rest_strategy, query=query_strategy)
@example(rest=b"", query=b"")
@example(rest=b"/", query=b"")
@example(rest=b"/orders", query=b"?x=1")
def test_service_prefix_and_everything_below_it_match_the_service(rest: bytes, query: bytes) -> None:
    """`/api/<name>` and `/api/<name>/<rest>` go to `<NAME>_URL`."""
    m = ENV_ROUTER.match(b"/api/service1" + rest + query)
    assert route_name(m) == "service1"
    assert m is not None and m.endpoint is None


@given(tail=segment_tail, rest=rest_strategy, query=query_strategy)
@example(tail=b"0", rest=b"/x", query=b"")  # /api/service10/x: service10's, never service1's
@example(tail=b"x", rest=b"", query=b"")  # /api/service1x
@example(tail=b"%2F", rest=b"", query=b"")  # an encoded slash is not a segment boundary
@example(tail=b"\\orders", rest=b"", query=b"")
def test_a_longer_segment_never_matches_the_shorter_name(tail: bytes, rest: bytes, query: bytes) -> None:
    """Matching is by whole path segments: `/api/service10/x` is not service1."""
    target = b"/api/service1" + tail + rest + query
    m = ENV_ROUTER.match(target)
    assert route_name(m) != "service1"
    if tail == b"0":
        assert route_name(m) == "service10"
    else:
        assert m is None  # no other route or endpoint shares that segment


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/api/service10/x", "service10"),
        (b"/api/service10", "service10"),
        (b"/api/service1x", None),
        (b"/api/service", None),
        (b"/api/Service1", None),  # paths are case-sensitive (RFC 3986 6.2.2.1)
        (b"/api/service1%2Forders", None),  # no decoding: %2F is not '/'
        (b"/api//service1", None),
        (b"//api/service1", None),
        (b"/apiservice1", None),
        (b"/service1", None),
        (b"/api", None),
        (b"/api/", None),
        (b"/", None),
    ],
)
def test_whole_segment_examples(target: bytes, expected: str | None) -> None:
    """Matching is by whole path segments: `/api/service10/x` is not service1; anything else is 404."""
    m = ENV_ROUTER.match(target)
    assert route_name(m) == expected
    if expected is None:
        assert m is None


# ------------------------------------------------------ byte-exact forwarding


@given(rest=rest_strategy, query=query_strategy)
@example(rest=b"/a%2Fb", query=b"")
@example(rest=b"/../../etc/passwd", query=b"")
@example(rest=b"//x//y/", query=b"?a=%2F&b=..")
@example(rest=b"/caf\xc3\xa9/\xff\xfe", query=b"?q=\xe2\x82\xac")
@example(rest=b"/a+b%20c;p=1", query=b"?x=1&x=2&&#frag")
@example(rest=b"", query=b"?")
@example(rest=b"/x", query=b"??a?b")
def test_rest_and_query_are_passed_byte_for_byte(rest: bytes, query: bytes) -> None:
    """The path after the prefix and the query string are passed byte for byte:
    no decoding, re-encoding or normalising; the prefix `/api/<name>` is replaced by `/api`."""
    m = ENV_ROUTER.match(b"/api/service1" + rest + query)
    assert m is not None and m.route is not None
    assert m.upstream_target == b"/api" + rest + query


@pytest.mark.parametrize(
    ("target", "upstream"),
    [
        (b"/api/service1/orders?x=1", b"/api/orders?x=1"),
        (b"/api/service1?x=1", b"/api?x=1"),
        (b"/api/service1", b"/api"),
        (b"/api/service1/", b"/api/"),
        (b"/api/service2/notifications/send", b"/api/notifications/send"),
    ],
)
def test_contract_examples_of_prefix_replacement(target: bytes, upstream: bytes) -> None:
    """`/api/service1/orders?x=1` -> `/api/orders?x=1`, `/api/service1?x=1` -> `/api?x=1`."""
    m = ENV_ROUTER.match(target)
    assert m is not None and m.route is not None
    assert m.upstream_target == upstream


# ------------------------------------------------------------ longest prefix


@pytest.mark.parametrize(
    ("target", "name", "upstream"),
    [
        (b"/api/a/b/c?x=1", "long", b"/two/c?x=1"),
        (b"/api/a/b", "long", b"/two"),
        (b"/api/a/b/", "long", b"/two/"),
        (b"/api/a/bc", "short", b"/one/bc"),
        (b"/api/a/c/b", "short", b"/one/c/b"),
        (b"/api/a", "short", b"/one"),
        (b"/api/a?q", "short", b"/one?q"),
        (b"/api/ab", "catchall", b"/ab"),
        (b"/api/service1/x", "service1", b"/api/x"),
        (b"/api", "catchall", b"/"),
        (b"/api?x=1", "catchall", b"/?x=1"),
    ],
)
def test_longest_whole_segment_prefix_wins(target: bytes, name: str, upstream: bytes) -> None:
    """Route lookup is a prefix trie: the longest whole-segment prefix wins, and the
    path after `prefix` is appended to the upstream URL's path."""
    m = NESTED_ROUTER.match(target)
    assert route_name(m) == name
    assert m is not None and m.upstream_target == upstream


@given(rest=rest_strategy, query=query_strategy)
def test_nested_route_takes_everything_below_it(rest: bytes, query: bytes) -> None:
    """With routes `/api/a` and `/api/a/b`, `/api/a/b/...` goes to the longer one, byte for byte."""
    m = NESTED_ROUTER.match(b"/api/a/b" + rest + query)
    assert route_name(m) == "long"
    assert m is not None and m.upstream_target == b"/two" + rest + query


SEGMENTS = ["a", "b", "ab", "api", "v1"]


@settings(max_examples=200, deadline=None)
@given(
    prefixes=st.lists(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4), max_size=6),
    path=st.lists(st.sampled_from([*SEGMENTS, "", "c", "a%2Fb"]), max_size=6),
    query=query_strategy,
)
def test_router_agrees_with_a_longest_prefix_model(
    prefixes: list[list[str]], path: list[str], query: bytes
) -> None:
    """Matching is by whole path segments and the longest prefix wins, for any set of
    routes-file prefixes (model: the longest p with path == p or path starts with p + '/')."""
    unique = sorted({"/" + "/".join(p) for p in prefixes})
    toml = "".join(
        f'[[route]]\nprefix = "{p}"\nname = "r{i}"\nupstream = "http://u{i}:8000/base{i}"\n'
        for i, p in enumerate(unique)
    )
    routes = load_routes_file(write_routes(toml), 5.0, 30.0, 0)
    router = Router(routes)
    target_path = ("/" + "/".join(path)).encode()
    m = router.match(target_path + query)

    candidates = [
        (i, p)
        for i, p in enumerate(unique)
        if target_path == p.encode() or target_path.startswith(p.encode() + b"/")
    ]
    if not candidates:
        assert m is None
        return
    i, p = max(candidates, key=lambda c: len(c[1]))
    assert route_name(m) == f"r{i}"
    assert m is not None
    assert m.upstream_target == f"/base{i}".encode() + target_path[len(p) :] + query


# -------------------------------------------------------- gateway endpoints


@pytest.mark.parametrize(
    ("target", "endpoint"),
    [
        (b"/health", "health"),
        (b"/api/gateway/status", "status"),
        (b"/api/gateway/services", "services"),
        (b"/api/gateway/metrics", "metrics"),
        (b"/api/gateway/recent", "recent"),
        (b"/api/gateway/anything", "not_found"),
        (b"/api/gateway/status/extra", "not_found"),
        (b"/api/gateway", "dashboard_redirect"),  # 308 to /api/gateway/
    ],
)
@pytest.mark.parametrize("router", [ENV_ROUTER, NESTED_ROUTER], ids=["env", "with-/api-route"])
def test_gateway_endpoints_are_matched_as_endpoints(router: Router, target: bytes, endpoint: str) -> None:
    """Gateway-owned, never forwarded: `/health`, `/api/gateway/*`; under /api/gateway
    anything else is the gateway's own 404, even when a route covers `/api`."""
    m = router.match(target)
    assert m is not None
    assert m.route is None
    assert m.endpoint == endpoint


@given(rest=rest_strategy.filter(bool), query=query_strategy)
def test_nothing_under_api_gateway_is_ever_forwarded(rest: bytes, query: bytes) -> None:
    """`/api/gateway/*` is gateway-owned, never forwarded (`gateway` is a reserved name)."""
    for router in (ENV_ROUTER, NESTED_ROUTER):
        m = router.match(b"/api/gateway" + rest + query)
        assert m is not None
        assert m.route is None and m.endpoint is not None


@pytest.mark.parametrize("target", [b"/health?verbose=1", b"/api/gateway/status?x"])
def test_endpoint_with_query_is_still_the_endpoint(target: bytes) -> None:
    """The query is not part of the path: `/health?x` is `/health`."""
    m = ENV_ROUTER.match(target)
    assert m is not None and m.route is None and m.endpoint in ("health", "status")


@pytest.mark.parametrize("target", [b"/health/", b"/healthz", b"/health/x", b"/Health", b"/healt"])
def test_near_misses_of_health_are_not_found(target: bytes) -> None:
    """`/health` is an exact endpoint; anything else (`/health/`, `/healthz`) is 404."""
    assert ENV_ROUTER.match(target) is None


@pytest.mark.parametrize(
    "target",
    [b"*", b"http://x/", b"http://x/api/service1/orders", b"x/api/service1", b"", b"?x=1", b"api/service1"],
)
def test_non_origin_form_targets_match_nothing(target: bytes) -> None:
    """Matching works on origin-form targets; `*` and absolute-form targets are no route."""
    assert ENV_ROUTER.match(target) is None


# --------------------------------------------------------- reserved names


def test_service_named_gateway_is_impossible() -> None:
    """`gateway` is a reserved service name: configuration refuses it, naming the variable."""
    with pytest.raises(ConfigError, match="GATEWAY_SERVICES"):
        from_env({"GATEWAY_SERVICES": "service1,gateway"})


@pytest.mark.parametrize("prefix", ["/api/gateway", "/api/gateway/x", "/health", "/health/x"])
def test_routes_file_cannot_take_gateway_paths(prefix: str) -> None:
    """Gateway-owned paths are never forwarded: a routes file cannot claim them."""
    path = write_routes(f'[[route]]\nprefix = "{prefix}"\nupstream = "http://x:8000"\n')
    with pytest.raises(ConfigError, match="GATEWAY_CONFIG"):
        from_env({"GATEWAY_CONFIG": path})


def test_router_refuses_a_route_on_the_gateway_prefix() -> None:
    """`/api/gateway` is the gateway's: even a hand-built Route cannot shadow it."""
    (route,) = from_env({"GATEWAY_SERVICES": "billing"}).routes
    shadow = type(route)(
        name="x",
        prefix="/api/gateway",
        upstream=route.upstream,
        strip_to=b"/api",
        connect_timeout_s=1.0,
        upstream_timeout_s=1.0,
        max_body_bytes=0,
    )
    with pytest.raises(ValueError):
        Router([shadow])


@pytest.mark.parametrize(
    ("target", "endpoint", "rest"),
    [
        (b"/api/gateway/", "dashboard", b""),
        (b"/api/gateway/docs", "docs", b""),
        (b"/api/gateway/docs?x=1", "docs", b""),
        (b"/api/gateway/docs/", "docs_asset", b"/"),
        (b"/api/gateway/docs/swagger-ui.css", "docs_asset", b"/swagger-ui.css"),
        (b"/api/gateway/docs/a/../b", "docs_asset", b"/a/../b"),
        (b"/api/gateway/docsx", "not_found", b""),
        (b"/api/gateway", "dashboard_redirect", b""),  # 308 to /api/gateway/ (contract v4)
        (b"/api/gateway/openapi.json", "openapi", b""),
        (b"/api/gateway/stats", "stats", b""),
    ],
)
def test_page_routes_exact_and_prefix(target, endpoint, rest):
    """Routing: `/api/gateway/docs` is exact; its assets are a prefix entry below it; `/api/gateway/` is exact."""
    m = Router(from_env({}).routes).match(target)
    assert m is not None and m.route is None
    assert (m.endpoint, m.rest if endpoint == "docs_asset" else b"") == (endpoint, rest)
