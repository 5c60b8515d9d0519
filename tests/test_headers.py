"""Header rules (docs/forwarding.md, RFC 9110 section 7.6.1), checked with hypothesis over header lists.

Headers are h11-shaped (raw name, lower-case name, value) triples, the way
``h11.Headers`` stores them. Each property compares the gateway's output with
a small model written from the contract (Go's ``reverseproxy.go`` semantics),
never with the module's own tables.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.headers import (
    client_response_headers,
    forwarded_client,
    request_id_of,
    upstream_request_headers,
    valid_host,
)

Triple = tuple[bytes, bytes, bytes]
Pair = tuple[bytes, bytes]

# Written out from the contract, not imported from gateway.headers.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
FORWARDED = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix"}
ADDED_BY_GATEWAY = FORWARDED | {b"x-request-id"}
REQUEST_ID_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:+=/-")

CLIENT_IP = b"203.0.113.7"
PREFIX = b"/api/service1"
REQUEST_ID = b"rid-0123"
DEFAULT_HOST = b"service1:8000"

# ---------------------------------------------------------------- strategies

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
INTERESTING_NAMES = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Forwarded-Prefix",
    "X-Request-ID",
    "Expect",
    "Set-Cookie",
    "Cookie",
    "Accept",
    "Authorization",
    "X-Custom",
    "Forwarded",
    "Via",
]


def _swap_case(name: str, mask: int) -> str:
    return "".join(c.swapcase() if mask >> i & 1 else c for i, c in enumerate(name))


def any_case(name: str) -> st.SearchStrategy[str]:
    """``name`` in any mix of upper and lower case."""
    return st.integers(0, 2 ** len(name) - 1).map(lambda mask: _swap_case(name, mask))


def any_case_of(choices: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(choices), st.integers(0, 2**24 - 1)).map(lambda t: _swap_case(*t))


_CONNECTION_EXTRAS = [n for n in INTERESTING_NAMES if n.lower() not in ("host", "content-length")]
header_name = st.one_of(
    any_case_of(INTERESTING_NAMES),
    st.text(TOKEN_CHARS, min_size=1, max_size=10).map(
        lambda n: "X-" + n if n.lower() in ("host", "content-length") else n
    ),
)
# Field values as h11 leaves them: visible ASCII/obs-text, inner spaces, no outer whitespace.
header_value = st.binary(max_size=16).map(
    lambda b: bytes(c for c in b if c == 0x20 or 0x21 <= c <= 0x7E or c >= 0x80).strip(b" ") or b"v"
)


@st.composite
def header_lists(draw: st.DrawFn) -> list[Triple]:
    """Headers with names drawn so that Connection often lists names that are present.

    Host and Content-Length are never named by Connection here: those two have
    their own tests below (framing and Host are not end-to-end options).
    """
    pairs = draw(st.lists(st.tuples(header_name, header_value), max_size=8))
    present = [n for n, _ in pairs if n.lower() != "connection"]
    for _ in range(draw(st.integers(0, 2))):
        tokens = []
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.integers(0, 2))
            if kind == 0 and present:
                token = present[draw(st.integers(0, len(present) - 1))]
            elif kind == 1:
                token = draw(st.sampled_from(_CONNECTION_EXTRAS))
            else:
                token = draw(st.sampled_from(["close", "keep-alive", "x-extra"]))
            tokens.append(_swap_case(token, draw(st.integers(0, 2**24 - 1))))
        sep = draw(st.sampled_from([",", ", ", " ,  "]))
        at = draw(st.integers(0, len(pairs)))
        pairs.insert(at, (draw(any_case("Connection")), sep.join(tokens).encode()))
    return [(n.encode(), n.lower().encode(), v) for n, v in pairs]


@st.composite
def request_headers(draw: st.DrawFn) -> list[Triple]:
    """As ``header_lists`` plus, usually, exactly one Host header somewhere."""
    items = draw(header_lists())
    if draw(st.booleans()) or draw(st.booleans()):
        host = draw(st.sampled_from([b"example.com", b"api.example.com:8443", b"[::1]:8080", b"h"]))
        items.insert(draw(st.integers(0, len(items))), (draw(any_case("Host")).encode(), b"host", host))
    return items


# -------------------------------------------------------------------- model


def connection_listed(items: list[Triple]) -> set[bytes]:
    listed: set[bytes] = set()
    for _, name, value in items:
        if name == b"connection":
            listed |= {t.strip().lower() for t in value.split(b",") if t.strip()}
    return listed


def dropped_names(items: list[Triple]) -> set[bytes]:
    return HOP_BY_HOP | connection_listed(items)


def names(out: list[Pair]) -> list[bytes]:
    return [n.lower() for n, _ in out]


def values_of(out: list[Pair], name: bytes) -> list[bytes]:
    return [v for n, v in out if n.lower() == name]


def upstream(
    items: list[Triple], *, trusted: bool = False, chunked: bool = False, request_id: bytes = REQUEST_ID
) -> list[Pair]:
    return upstream_request_headers(
        items,
        client_ip=CLIENT_IP,
        trusted=trusted,
        prefix=PREFIX,
        request_id=request_id,
        chunked=chunked,
        default_host=DEFAULT_HOST,
    )


def triples(*pairs: tuple[str, str]) -> list[Triple]:
    return [(n.encode(), n.lower().encode(), v.encode()) for n, v in pairs]


# ------------------------------------------------------- request direction


@given(items=request_headers(), trusted=st.booleans(), chunked=st.booleans())
def test_no_hop_by_hop_header_reaches_the_backend(items: list[Triple], trusted: bool, chunked: bool) -> None:
    """Hop-by-hop headers (`Connection` and the names it lists, `Keep-Alive`, `Proxy-Connection`,
    `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`)
    are dropped and the message is re-framed: a chunked client body gets exactly one
    `Transfer-Encoding: chunked` upstream, any other body none."""
    out = upstream(items, trusted=trusted, chunked=chunked)
    # The gateway's own X-Forwarded-* / X-Request-ID and its re-framing are
    # not the client's headers, whatever Connection listed.
    client_copies = [n for n in names(out) if n not in ADDED_BY_GATEWAY]
    leaked = set(client_copies) & dropped_names(items)
    if chunked:
        leaked.discard(b"transfer-encoding")
    assert values_of(out, b"transfer-encoding") == ([b"chunked"] if chunked else [])
    assert not leaked


@given(items=request_headers(), trusted=st.booleans(), chunked=st.booleans())
@example(
    items=triples(("Host", "h"), ("Cookie", "a=1"), ("X-A", "1"), ("Cookie", "b=2"), ("x-a", "2")),
    trusted=False,
    chunked=False,
)
def test_end_to_end_request_headers_keep_order_case_and_duplicates(
    items: list[Triple], trusted: bool, chunked: bool
) -> None:
    """End-to-end headers (order and duplicates kept) pass unchanged; `Expect: 100-continue`
    is answered by the gateway (never forwarded), and X-Forwarded-* / X-Request-ID are the gateway's own."""
    items = [*items, (b"Expect", b"expect", b"100-continue")]
    out = upstream(items, trusted=trusted, chunked=chunked)
    assert b"expect" not in names(out)
    drop = dropped_names(items) | ADDED_BY_GATEWAY | {b"expect"}
    expected = [(raw, value) for raw, name, value in items if name not in drop]
    passed = [(n, v) for n, v in out if n.lower() not in drop]
    if not any(name == b"host" for _, name, _ in items) and b"host" not in drop:
        passed.remove((b"Host", DEFAULT_HOST))  # asserted in its own test
    assert passed == expected


@given(items=request_headers(), trusted=st.booleans())
def test_forwarded_headers_are_the_gateways_view_unless_the_peer_is_trusted(
    items: list[Triple], trusted: bool
) -> None:
    """From a trusted peer `X-Forwarded-For` is appended to (", ") and its `X-Forwarded-Proto`/`-Host`
    kept; from anyone else the client's `X-Forwarded-*` are replaced by the gateway's own view.
    `X-Forwarded-Prefix` is always the gateway's `/api/<name>`."""
    items = [(b"X-Forwarded-Prefix", b"x-forwarded-prefix", b"/evil"), *items]
    out = upstream(items, trusted=trusted)
    gone = connection_listed(items)
    sent = {
        name: [v for _, n, v in items if n == name and name not in gone]
        for name in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
    }
    hosts = [v for _, n, v in items if n == b"host"]
    host = hosts[0] if hosts else DEFAULT_HOST

    if trusted:
        want_xff = b", ".join([*sent[b"x-forwarded-for"], CLIENT_IP])
        want_proto = sent[b"x-forwarded-proto"][0] if sent[b"x-forwarded-proto"] else b"http"
        want_host = sent[b"x-forwarded-host"][0] if sent[b"x-forwarded-host"] else host
    else:
        want_xff, want_proto, want_host = CLIENT_IP, b"http", host
    assert values_of(out, b"x-forwarded-for") == [want_xff]
    assert values_of(out, b"x-forwarded-proto") == [want_proto]
    assert values_of(out, b"x-forwarded-host") == [want_host]
    assert values_of(out, b"x-forwarded-prefix") == [PREFIX]
    assert values_of(out, b"x-request-id") == [REQUEST_ID]


def test_xff_from_a_trusted_proxy_joins_every_prior_header() -> None:
    """From a trusted peer `X-Forwarded-For` is appended to: several prior headers are joined with ", "."""
    items = triples(
        ("Host", "shop.example"),
        ("X-Forwarded-For", "198.51.100.1"),
        ("Accept", "*/*"),
        ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "public.example"),
    )
    out = upstream(items, trusted=True)
    assert values_of(out, b"x-forwarded-for") == [b"198.51.100.1, 10.0.0.1, 10.0.0.2, " + CLIENT_IP]
    assert values_of(out, b"x-forwarded-proto") == [b"https"]
    assert values_of(out, b"x-forwarded-host") == [b"public.example"]

    spoofed = upstream(items, trusted=False)
    assert values_of(spoofed, b"x-forwarded-for") == [CLIENT_IP]
    assert values_of(spoofed, b"x-forwarded-proto") == [b"http"]
    assert values_of(spoofed, b"x-forwarded-host") == [b"shop.example"]


@given(items=request_headers())
def test_host_is_passed_as_the_client_sent_it(items: list[Triple]) -> None:
    """`Host` is passed as the client sent it (name case and value); without one
    (HTTP/1.0) the upstream's host is sent, once."""
    out = upstream(items)
    sent = [(raw, value) for raw, name, value in items if name == b"host"]
    got = [(n, v) for n, v in out if n.lower() == b"host"]
    if sent:
        assert got == sent
    else:
        assert got == [(b"Host", DEFAULT_HOST)]


def test_host_survives_a_connection_header_that_names_it() -> None:
    """`Host` is passed as the client sent it (Go's proxy keeps req.Host whatever
    Connection lists; Host is routing data, not a hop-by-hop option)."""
    items = triples(("Host", "tenant-a.example"), ("Connection", "host"), ("Accept", "*/*"))
    out = upstream(items)
    assert values_of(out, b"host") == [b"tenant-a.example"]


def test_connection_naming_content_length_does_not_unframe_the_body() -> None:
    """Method, query, body pass unchanged and the message is re-framed: a body with a
    Content-Length must still be framed upstream (Content-Length or chunked) even when
    the client's Connection header lists `Content-Length` (RFC 9112 6.3: a request
    without either has no body, so the body would be lost or desync the connection)."""
    items = triples(
        ("Host", "h"),
        ("Content-Length", "5"),
        ("Connection", "content-length"),
        ("Content-Type", "text/plain"),
    )
    out = upstream(items, chunked=False)
    framing = values_of(out, b"content-length") + values_of(out, b"transfer-encoding")
    assert framing in ([b"5"], [b"chunked"])


@given(items=request_headers())
def test_content_length_is_passed_when_not_chunked(items: list[Triple]) -> None:
    """Body framing by Content-Length passes unchanged (h11 has checked it is single and valid)."""
    at = len(items) // 2
    items = [*items[:at], (b"Content-Length", b"content-length", b"42"), *items[at:]]
    out = upstream(items, chunked=False)
    assert values_of(out, b"content-length") == [b"42"]
    assert values_of(out, b"transfer-encoding") == []


# ---------------------------------------------------------------- X-Request-ID


def is_valid_request_id(value: bytes) -> bool:
    return 1 <= len(value) <= 128 and all(c in REQUEST_ID_CHARS for c in value)


request_id_values = st.one_of(
    st.binary(max_size=140),
    st.text("AZaz09._:+=/-", min_size=1, max_size=140).map(str.encode),
    st.sampled_from([b"", b"a" * 128, b"a" * 129, b"abc\n", b"ab c", b"\xc3\xa9", b"id;1", b"id,2"]),
)


@given(value=request_id_values, before=header_lists(), after=header_lists())
@example(value=b"a" * 128, before=[], after=[])
@example(value=b"a" * 129, before=[], after=[])
@example(value=b"abc\n", before=[], after=[])
@example(value=b"", before=[], after=[])
def test_request_id_is_kept_when_valid_else_generated(
    value: bytes, before: list[Triple], after: list[Triple]
) -> None:
    """`X-Request-ID` is kept when the client sent one of 1 to 128 characters from
    `A-Za-z0-9._:+=/-`, else generated (32 hex)."""
    strip = {b"x-request-id"}
    before = [t for t in before if t[1] not in strip]
    after = [t for t in after if t[1] not in strip]
    items = [*before, (b"X-Request-Id", b"x-request-id", value), *after]
    rid = request_id_of(items)
    if is_valid_request_id(value):
        assert rid == value
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", rid)


def test_request_id_is_generated_when_absent_and_unique() -> None:
    """Without a client X-Request-ID the gateway generates one (32 hex), a new one per request."""
    ids = {request_id_of(triples(("Host", "h"))) for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(rb"[0-9a-f]{32}", i) for i in ids)


@given(items=request_headers(), value=request_id_values)
def test_upstream_and_response_carry_the_same_request_id(items: list[Triple], value: bytes) -> None:
    """The gateway adds `X-Request-ID` upstream and the response carries the same one."""
    items = [t for t in items if t[1] != b"x-request-id"] + [(b"X-Request-ID", b"x-request-id", value)]
    rid = request_id_of(items)
    up = upstream(items, request_id=rid)
    down = client_response_headers([(b"X-Request-ID", b"x-request-id", b"backend-id")], rid)
    assert values_of(up, b"x-request-id") == [rid]
    assert values_of(down, b"x-request-id") == [rid]


# ------------------------------------------------------- response direction


@given(items=header_lists())
@example(
    items=triples(
        ("Set-Cookie", "a=1; Path=/"),
        ("Content-Type", "text/plain"),
        ("set-cookie", "b=2; HttpOnly"),
        ("Connection", "keep-alive, X-Internal"),
        ("X-Internal", "secret"),
        ("Transfer-Encoding", "chunked"),
    )
)
def test_response_headers_reach_the_client_unchanged_but_hop_by_hop(items: list[Triple]) -> None:
    """Headers of the backend's response reach the client unchanged (order, case, duplicates:
    two Set-Cookie stay two), hop-by-hop removed; the backend's X-Request-ID is replaced by ours."""
    rid = b"0123456789abcdef0123456789abcdef"
    out = client_response_headers(items, rid)
    drop = dropped_names(items) | {b"x-request-id"}
    expected = [(raw, value) for raw, name, value in items if name not in drop]
    assert [(n, v) for n, v in out if n.lower() != b"x-request-id"] == expected
    assert values_of(out, b"x-request-id") == [rid]
    assert not set(names(out)) & dropped_names(items) - {b"x-request-id"}


def test_two_set_cookie_headers_stay_two_in_order() -> None:
    """Status, headers and body of the backend's response reach the client unchanged:
    duplicates are kept, never folded (RFC 6265 3: Set-Cookie must not be combined)."""
    items = triples(
        ("Set-Cookie", "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
        ("X-Request-ID", "from-backend"),
        ("Set-Cookie", "b=2"),
    )
    out = client_response_headers(items, b"ours")
    assert out == [
        (b"Set-Cookie", b"a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Request-ID", b"ours"),
    ]


# ------------------------------------------------- Host (RFC 9112 3.2) and the forwarded client


@pytest.mark.parametrize(
    "host",
    [b"", b"a", b"example.com", b"example.com:8080", b"host:", b"10.0.0.1:80", b"[::1]", b"[2001:db8::1]:443",
     b"[v1.fe]", b"a%20b", b"a-b_c.~x!$&'()*+,;="],
)
def test_valid_host_accepts_reg_name_ipv4_and_ip_literal_with_optional_port(host: bytes) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host", [b"a b", b"a:b", b"a:1:2", b"[::1", b"::1", b"[zz::1]", b"a%2", b"a/b", b"a@b", b"\xff", b"a\tb"]
)
def test_invalid_host_is_rejected(host: bytes) -> None:
    assert not valid_host(host)


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        ([], "127.0.0.1"),
        ([b"203.0.113.9"], "203.0.113.9"),
        ([b"10.0.0.1, 203.0.113.9"], "203.0.113.9"),  # the nearest untrusted hop, not the leftmost (spoofable)
        ([b"203.0.113.9, 127.0.0.2"], "203.0.113.9"),  # trusted hops are skipped
        ([b"10.0.0.1", b"203.0.113.9 , 127.0.0.3"], "203.0.113.9"),  # several fields are one list
        ([b"127.0.0.5, 127.0.0.2"], "127.0.0.5"),  # every hop trusted: the leftmost
        ([b"garbage"], "garbage"),  # not an address: the client, never in an allow list
    ],
)
def test_forwarded_client_is_the_nearest_untrusted_entry(xff: list[bytes], client: str) -> None:
    items = [(b"Host", b"host", b"x")] + [(b"X-Forwarded-For", b"x-forwarded-for", v) for v in xff]
    assert forwarded_client(items, "127.0.0.1", _loopback) == client
