"""Header rules for both directions: pure functions on lists of byte pairs.

Follows Go's ``net/http/httputil/reverseproxy.go``: hop-by-hop headers and
every name listed in ``Connection`` are dropped (RFC 9110 7.6.1), the message
is re-framed, ``X-Forwarded-For`` is appended to with ``", "``. Order, case
and duplicates of everything else are kept: headers stay a list of tuples,
never a dict. No asyncio here.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence

Header = tuple[bytes, bytes]
# (raw name, lower-case name, value): the shape of h11's parsed headers.
FullHeader = tuple[bytes, bytes, bytes]

# RFC 9110 7.6.1, plus Proxy-Connection (non-standard, still sent) and the
# ones Go's reverseproxy lists. Transfer-Encoding is re-framed, never copied.
HOP_BY_HOP = frozenset(
    {
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
)
# Set by the gateway itself on the way up; the client's copies are dropped
# (or, from a trusted proxy, merged) so they can't be spoofed.
_FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix", b"x-request-id"}
)
_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}\Z")


def full_items(headers: object) -> list[FullHeader]:
    """h11 ``Headers`` as (raw, lower, value) triples without re-lowering.

    ``_full_items`` has been h11's storage since 0.10; ``raw_items()`` would
    cost a ``lower()`` per header on the hot path.
    """
    return headers._full_items  # type: ignore[attr-defined,no-any-return]  # h11.Headers keeps raw items privately


def connection_tokens(items: Iterable[FullHeader]) -> set[bytes]:
    tokens: set[bytes] = set()
    for _, name, value in items:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return tokens


# A Connection header may name any field, but never these: dropping Host or
# the message's framing would change what the request means (and unframe a
# body into the next request on the upstream connection).
_NEVER_DROPPED = frozenset({b"host", b"content-length"})


def _connection_drop(items: Sequence[FullHeader]) -> set[bytes] | frozenset[bytes]:
    for _, name, _ in items:
        if name == b"connection":
            return connection_tokens(items) - _NEVER_DROPPED
    return frozenset()


# RFC 9112 3.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ], uri-host being an
# IP-literal ("[" IPv6 or IPvFuture "]"), an IPv4 address or a reg-name
# (unreserved, pct-encoded, sub-delims; IPv4 is a reg-name lexically). Empty is
# allowed (a target without authority). Anything else: 400 (RFC 9112 3.2).
_HOST_RE = re.compile(
    rb"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|\[[vV][0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+\]"
    rb"|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)


# Hosts already found valid (a process sees few): a set lookup instead of the
# regex on every request. Bounded: past it, new hosts are checked each time.
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_MAX = 256


def valid_host(value: bytes) -> bool:
    if value in _VALID_HOSTS:
        return True
    m = _HOST_RE.fullmatch(value)
    if m is None:
        return False
    ip6 = m.group("ip6")
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6.decode("ascii"))
        except ValueError:
            return False
    if len(_VALID_HOSTS) < _VALID_HOSTS_MAX:
        _VALID_HOSTS.add(value)
    return True


def forwarded_client(items: Iterable[FullHeader], peer: str, is_trusted: Callable[[str], bool]) -> str:
    """The client as the access log names it: for a trusted proxy ``peer``, the
    nearest untrusted ``X-Forwarded-For`` entry (right to left, skipping trusted
    hops: nginx's ``real_ip_recursive on``); every hop trusted: the leftmost one.
    Call only for a trusted peer; an entry that is no address is the client
    (it is then never in an allow list)."""
    values = [value for _, name, value in items if name == b"x-forwarded-for"]
    if not values:
        return peer
    client = peer
    for hop in reversed(b",".join(values).split(b",")):
        addr = hop.strip().decode("latin-1")
        if not addr:
            continue
        client = addr
        if not is_trusted(addr):
            break
    return client


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID_RE.match(value) is not None


class _RandomHex:
    """Random lower-case hex from one ``os.urandom`` call per 4 KiB, not one per id."""

    __slots__ = ("_hex", "_pos")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the buffered bytes (a forked child must not reuse its parent's)."""
        self._hex = b""
        self._pos = 0

    def take(self, chars: int) -> bytes:
        pos = self._pos
        if pos + chars > len(self._hex):
            self._hex = os.urandom(4096).hex().encode("ascii")
            pos = 0
        self._pos = pos + chars
        return self._hex[pos : pos + chars]


_random = _RandomHex()
random_hex = _random.take
# Forked workers must not hand out the same ids as their siblings.
os.register_at_fork(after_in_child=_random.reset)


def new_request_id() -> bytes:
    return random_hex(32)


def request_id_of(items: Iterable[FullHeader]) -> bytes:
    """The client's X-Request-ID when it is 1-128 chars of ``A-Za-z0-9._:+=/-``, else a new one."""
    for _, name, value in items:
        if name == b"x-request-id":
            return value if valid_request_id(value) else new_request_id()
    return new_request_id()


def upstream_request_headers(
    items: Sequence[FullHeader],
    *,
    client_ip: bytes,
    trusted: bool,
    prefix: bytes,
    request_id: bytes,
    chunked: bool,
    default_host: bytes,
    traceparent: bytes | None = None,
) -> list[Header]:
    """Headers to send upstream for one request.

    ``chunked``: the client's body was chunked, so we send it chunked too
    (h11 frames responses itself, but not requests). A Content-Length from
    the client (h11 already checked it is single and valid) stays in place.
    ``default_host`` is used only when an HTTP/1.0 client sent no Host.
    """
    drop = _connection_drop(items)
    out: list[Header] = []
    prior_xff: list[bytes] = []
    proto: bytes | None = None
    fwd_host: bytes | None = None
    host: bytes | None = None
    kept_traceparent = False
    for raw, name, value in items:
        if name in HOP_BY_HOP or name in drop:
            continue
        if name in _FORWARDED:
            if trusted:
                if name == b"x-forwarded-for":
                    prior_xff.append(value)
                elif name == b"x-forwarded-proto" and proto is None:
                    proto = value
                elif name == b"x-forwarded-host" and fwd_host is None:
                    fwd_host = value
            continue
        if name == b"expect":
            continue  # answered by the gateway (RFC 9110 10.1.1; docs/forwarding.md)
        if name == b"traceparent" and traceparent is not None:
            if value != traceparent or kept_traceparent:
                continue  # invalid or repeated: replaced by the one we send
            kept_traceparent = True
        if name == b"host":
            host = value
        out.append((raw, value))
    if host is None:
        host = default_host
        out.insert(0, (b"Host", host))
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    if traceparent is not None and not kept_traceparent:
        out.append((b"traceparent", traceparent))
    xff = b", ".join([*prior_xff, client_ip]) if prior_xff else client_ip
    out.append((b"X-Forwarded-For", xff))
    out.append((b"X-Forwarded-Proto", proto or b"http"))
    out.append((b"X-Forwarded-Host", fwd_host or host))
    out.append((b"X-Forwarded-Prefix", prefix))
    out.append((b"X-Request-ID", request_id))
    return out


def client_response_headers(items: Sequence[FullHeader], request_id: bytes) -> list[Header]:
    """The backend's response headers for the client, hop-by-hop removed.

    Content-Length stays (h11 checks the body against it); Transfer-Encoding
    goes and h11 re-frames: chunked for HTTP/1.1 clients, close-delimited for
    HTTP/1.0. The backend's own X-Request-ID is replaced by ours.
    """
    drop = _connection_drop(items)
    out = [
        (raw, value)
        for raw, name, value in items
        if name not in HOP_BY_HOP and name not in drop and name != b"x-request-id"
    ]
    out.append((b"X-Request-ID", request_id))
    return out


# W3C Trace Context, section 3.2: version-traceid-parentid-flags, lower-case hex.
_TRACEPARENT_RE = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?\Z")
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


def trace_context(items: Iterable[FullHeader]) -> tuple[bytes, bytes]:
    """(traceparent to send upstream, trace id).

    A single valid incoming ``traceparent`` passes unchanged; none, several or
    an invalid one: a new ``00-<32 hex>-<16 hex>-01`` is minted.
    """
    found: bytes | None = None
    for _, name, value in items:
        if name == b"traceparent":
            if found is not None:
                found = None  # repeated: invalid (W3C 3.2)
                break
            found = value
    if found is not None:
        m = _TRACEPARENT_RE.match(found)
        if (
            m is not None
            and m.group(1) != b"ff"
            and not (m.group(1) == b"00" and m.group(5))
            and m.group(2) != _ZERO_TRACE
            and m.group(3) != _ZERO_PARENT
        ):
            return found, m.group(2)
    ids = random_hex(48)
    trace_id = ids[:32]
    return b"00-" + trace_id + b"-" + ids[32:] + b"-01", trace_id


def rewrite_location(value: bytes, origin: bytes, strip_to: bytes, prefix: bytes) -> bytes:
    """A backend redirect to ``<strip_to>/<rest>`` (relative, or absolute on its own
    origin) becomes ``<prefix>/<rest>`` (opt-in: GATEWAY_REWRITE_LOCATION)."""
    path = value
    if value.startswith(origin) and value[len(origin) : len(origin) + 1] in (b"/", b"?", b""):
        path = value[len(origin) :] or b"/"
    elif not value.startswith(b"/") or value.startswith(b"//"):
        return value  # another host, or a relative reference we leave alone
    n = len(strip_to)
    if path == strip_to or (path.startswith(strip_to) and path[n : n + 1] in (b"/", b"?", b"#")):
        return prefix + path[n:]
    return value
