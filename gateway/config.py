"""Configuration: environment (primary) and an optional TOML routes file.

``from_env(environ)`` returns a frozen ``Config`` or raises ``ConfigError``
naming the variable, which the CLI turns into one line on stderr and exit
code 2 (README.md, Configuration). Every variable, its default and what it
means is one entry of ``SETTINGS``; README.md's table lists the same
(``tests/test_config_table.py``). No asyncio here.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from gateway.cpus import usable_cpus as usable_cpus  # GATEWAY_WORKERS=auto; re-exported for its tests
from gateway.endpoints import is_reserved

RESERVED_NAMES = frozenset({"gateway"})
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62})\Z")
_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+\Z")
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_OPENAPI_PATH = "/openapi.json"  # <NAME>_OPENAPI_PATH (SETTINGS)


class ConfigError(ValueError):
    """A bad configuration value; str() is the one line printed at start-up."""


def authority(host: str, port: int | None = None) -> str:
    """``host:port`` as in a URL or a Host header: an IPv6 address in brackets (RFC 3986, 3.2.2)."""
    name = f"[{host}]" if ":" in host else host
    return name if port is None else f"{name}:{port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: bytes  # prepended to the forwarded path; b"" for an origin
    display: str  # the URL with any userinfo redacted
    origin: str = field(init=False, compare=False)  # scheme://host:port, derived once

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", f"{self.scheme}://{authority(self.host, self.port)}")


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # service name: the access log's `service`
    prefix: str  # e.g. "/api/service1", whole segments
    upstream: Upstream
    strip_to: bytes  # what replaces the prefix upstream: b"/api" for env services
    connect_timeout_s: float
    upstream_timeout_s: float
    max_body_bytes: int  # 0: no limit
    openapi_path: str = DEFAULT_OPENAPI_PATH  # the backend's OpenAPI document, on its origin
    # Derived once, used on every request.
    prefix_bytes: bytes = field(init=False, repr=False, compare=False)
    host_header: bytes = field(init=False, repr=False, compare=False)  # for HTTP/1.0 clients without Host

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix_bytes", self.prefix.encode("ascii"))
        object.__setattr__(self, "host_header", authority(self.upstream.host, self.upstream.port).encode("ascii"))


@dataclass(frozen=True, slots=True)
class Config:
    """What ``from_env`` read; the defaults are in ``SETTINGS``, nowhere else."""

    host: str
    port: int
    routes: tuple[Route, ...]
    connect_timeout_s: float
    upstream_timeout_s: float
    max_body_bytes: int
    max_header_bytes: int
    max_header_count: int
    pool_max_connections: int
    pool_timeout_s: float
    pool_idle_timeout_s: float
    client_header_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int
    drain_delay_s: float
    shutdown_timeout_s: float
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    request_buffer_bytes: int
    client_body_timeout_s: float
    admin_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    workers: int
    workers_reason: str  # how `auto` chose ``workers`` (logged at start-up)
    config_path: str | None
    access_log: bool
    log_level: str
    recent_size: int
    server_timing: bool
    rewrite_location: bool


def _number(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name}={raw!r}: must be a {'positive' if positive else 'non-negative'} number")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected on or off")


def _parse_cidrs(
    name: str, raw: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP address or CIDR") from None
    return tuple(nets)


_USERINFO_RE = re.compile(r"(?<=://)[^/@]*@")


def _redact(raw: str) -> str:
    return _USERINFO_RE.sub("***@", raw)


def parse_upstream(name: str, raw: str, *, allow_path: bool) -> Upstream:
    """Parse a backend URL; ``name`` is the variable (or file key) for errors."""
    shown = _redact(raw)
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{name}={shown!r}: invalid URL ({exc})") from None
    if parts.scheme != "http":
        if parts.scheme == "https":
            raise ConfigError(f"{name}={shown!r}: https upstreams are not supported (plain http only)")
        raise ConfigError(f"{name}={shown!r}: URL needs the http:// scheme")
    if not parts.hostname:
        raise ConfigError(f"{name}={shown!r}: URL has no host")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}={shown!r}: URL must not have a query or fragment")
    path = parts.path.rstrip("/")
    if not re.fullmatch(r"[!-~]*", path):
        raise ConfigError(f"{name}={shown!r}: URL path must be printable ASCII without spaces (percent-encode it)")
    if path and not allow_path:
        raise ConfigError(
            f"{name}={shown!r}: must be an origin (http://host:port) without a path;"
            " use a GATEWAY_CONFIG route for a base path"
        )
    netloc = authority(parts.hostname, parts.port)
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + netloc
    return Upstream(
        scheme="http",
        host=parts.hostname,
        port=port or 80,
        base_path=path.encode("ascii"),  # printable ASCII: checked above
        display=f"http://{netloc}{path}",
    )


# ------------------------------------------------------------ the variables
#
# Each reader gets (environment, variable, default) and returns the value, or
# raises ConfigError naming the variable. A blank value is the default, except
# for the lists (an empty GATEWAY_ADMIN_ALLOW allows nobody).

Reader = Callable[[Mapping[str, str], str, str], Any]


def _seconds(*, positive: bool = False) -> Reader:
    return lambda env, var, default: _number(env, var, float(default), positive=positive)


def _count(*, minimum: int = 0) -> Reader:
    return lambda env, var, default: _integer(env, var, int(default), minimum=minimum)


def _on_off(env: Mapping[str, str], var: str, default: str) -> bool:
    return _flag(env, var, default == "on")


def _cidrs(env: Mapping[str, str], var: str, default: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return _parse_cidrs(var, env.get(var, default))


def _text(env: Mapping[str, str], var: str, default: str) -> str:
    return env.get(var, default).strip() or default


def _port(env: Mapping[str, str], var: str, default: str) -> int:
    port = _integer(env, var, int(default))
    if port > 65535:
        raise ConfigError(f"{var}={env[var]!r}: must be at most 65535")
    return port


def _log_level(env: Mapping[str, str], var: str, default: str) -> str:
    level = env.get(var, default).strip().lower() or default
    if level not in LOG_LEVELS:
        raise ConfigError(f"{var}={level!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level


def _workers(env: Mapping[str, str], var: str, default: str) -> tuple[int, str]:
    """(workers, how they were chosen): ``auto`` is the CPUs this process may use."""
    if (env.get(var, default).strip() or default) == "auto":
        return usable_cpus()
    return _integer(env, var, int(default), minimum=1), var


def _names(env: Mapping[str, str], var: str, default: str) -> list[str]:
    return [n.strip() for n in env.get(var, default).split(",")]


def _path(env: Mapping[str, str], var: str, default: str) -> str | None:
    return env.get(var) or None


@dataclass(frozen=True, slots=True)
class Setting:
    var: str  # ``<NAME>`` stands for each service's name, upper-cased, ``-`` as ``_``
    default: str | None  # as the environment spells it; None: unset
    meaning: str  # README.md's configuration table says the same
    read: Reader | None = None  # None: from_env reads it per service
    attr: str | None = None  # the Config field it fills; None: from_env uses it to build the routes


SETTINGS: tuple[Setting, ...] = (
    Setting("GATEWAY_HOST", "0.0.0.0", "listen address", _text, "host"),
    Setting("GATEWAY_PORT", "8080", "listen port", _port, "port"),
    Setting("GATEWAY_SERVICES", "service1,service2", "comma-separated backend names", _names),
    Setting("<NAME>_URL", "http://<name>:8000", "origin of backend <name>"),
    Setting("GATEWAY_CONNECT_TIMEOUT", "5", "seconds to open an upstream connection (then 504)",
            _seconds(positive=True), "connect_timeout_s"),
    Setting("GATEWAY_UPSTREAM_TIMEOUT", "30",
            "seconds to wait for the response head, and for each body read (then 504)",
            _seconds(positive=True), "upstream_timeout_s"),
    Setting("GATEWAY_MAX_BODY_BYTES", "10485760", "largest request body (0: no limit; over it: 413)",
            _count(), "max_body_bytes"),
    Setting("GATEWAY_MAX_HEADER_BYTES", "65536", "largest request head (over it: 431)",
            _count(minimum=1024), "max_header_bytes"),
    Setting("GATEWAY_POOL_MAX_CONNECTIONS", "100", "upstream connections per backend, busy + idle",
            _count(minimum=1), "pool_max_connections"),
    Setting("GATEWAY_POOL_TIMEOUT", "5", "seconds a request waits for a pooled connection (then 503)",
            _seconds(), "pool_timeout_s"),
    # uvicorn closes idle keep-alive connections after 5 s (its --timeout-keep-alive
    # default); expiring ours a second earlier means the backend's close almost
    # never races a request we send on a pooled connection.
    Setting("GATEWAY_POOL_IDLE_TIMEOUT", "4", "seconds an idle upstream connection is kept",
            _seconds(), "pool_idle_timeout_s"),
    Setting("GATEWAY_CLIENT_HEADER_TIMEOUT", "10", "seconds for a client to send a whole request head (then 408)",
            _seconds(positive=True), "client_header_timeout_s"),
    Setting("GATEWAY_KEEPALIVE_TIMEOUT", "75", "seconds an idle client connection is kept",
            _seconds(), "keepalive_timeout_s"),
    Setting("GATEWAY_MAX_CONNECTIONS", "20000", "open client connections; past it a new one is closed at once",
            _count(minimum=1), "max_connections"),
    Setting("GATEWAY_DRAIN_DELAY", "0", "seconds after SIGTERM during which the gateway still accepts",
            _seconds(), "drain_delay_s"),
    Setting("GATEWAY_SHUTDOWN_TIMEOUT", "30", "grace period for in-flight requests after the listener closes",
            _seconds(), "shutdown_timeout_s"),
    Setting("GATEWAY_TRUSTED_PROXIES", "127.0.0.1/8,::1", "CIDRs whose X-Forwarded-* headers are trusted",
            _cidrs, "trusted_proxies"),
    Setting("GATEWAY_REQUEST_BUFFER_BYTES", "65536", "request body bytes read before a backend connection is taken",
            _count(), "request_buffer_bytes"),
    Setting("GATEWAY_CLIENT_BODY_TIMEOUT", "10", "longest pause between two reads of a request body (then 408)",
            _seconds(positive=True), "client_body_timeout_s"),
    # Loopback and the private ranges (RFC 1918, RFC 4193): who may read the
    # operational endpoints (docs/hardening.md), nginx's allow/deny.
    Setting("GATEWAY_ADMIN_ALLOW", "127.0.0.0/8,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
            "CIDRs of the clients that may use the operational endpoints (others: 403)", _cidrs, "admin_allow"),
    Setting("GATEWAY_MAX_HEADER_COUNT", "100", "most header fields in a request (over it: 431)",
            _count(minimum=1), "max_header_count"),
    Setting("GATEWAY_WORKERS", "1", "worker processes sharing the port (auto: one per usable CPU)",
            _workers, "workers"),
    Setting("GATEWAY_CONFIG", None, "optional TOML routes file", _path),
    Setting("GATEWAY_RECENT_SIZE", "100", "requests kept for /api/gateway/recent", _count(), "recent_size"),
    Setting("GATEWAY_SERVER_TIMING", "off", "on adds Server-Timing to forwarded responses", _on_off, "server_timing"),
    Setting("GATEWAY_REWRITE_LOCATION", "off", "on keeps the /api/<name> prefix on backend redirects",
            _on_off, "rewrite_location"),
    Setting("<NAME>_OPENAPI_PATH", DEFAULT_OPENAPI_PATH, "where backend <name> serves its OpenAPI document"),
    Setting("GATEWAY_ACCESS_LOG", "on", "off silences the per-request lines", _on_off, "access_log"),
    Setting("GATEWAY_LOG_LEVEL", "info", "debug, info, warning, error", _log_level, "log_level"),
)
_SETTING: dict[str, Setting] = {s.var: s for s in SETTINGS}


def _read(env: Mapping[str, str], var: str) -> Any:
    setting = _SETTING[var]
    assert setting.read is not None
    return setting.read(env, var, setting.default or "")


def env_var_for(service: str) -> str:
    return service.upper().replace("-", "_") + "_URL"


def from_env(environ: Mapping[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    values = {s.attr: _read(env, s.var) for s in SETTINGS if s.attr is not None}
    workers, workers_reason = values.pop("workers")
    connect_timeout_s = values["connect_timeout_s"]
    upstream_timeout_s = values["upstream_timeout_s"]
    max_body_bytes = values["max_body_bytes"]

    routes: list[Route] = []
    names = _read(env, "GATEWAY_SERVICES")
    default_url = _SETTING["<NAME>_URL"].default or ""
    seen: set[str] = set()
    seen_vars: dict[str, str] = {}
    for service in names:
        if not service:
            continue
        if not _NAME_RE.match(service):
            raise ConfigError(
                f"GATEWAY_SERVICES: {service!r} is not a valid service name"
                " (lower-case letters, digits, '-' and '_')"
            )
        if service in RESERVED_NAMES:
            raise ConfigError(f"GATEWAY_SERVICES: {service!r} is reserved for the gateway's own endpoints")
        if service in seen:
            raise ConfigError(f"GATEWAY_SERVICES: {service!r} is listed twice")
        seen.add(service)
        var = env_var_for(service)
        if var in seen_vars:
            raise ConfigError(f"GATEWAY_SERVICES: {seen_vars[var]!r} and {service!r} would both read {var}")
        seen_vars[var] = service
        upstream = parse_upstream(var, env.get(var, default_url.replace("<name>", service)), allow_path=False)
        routes.append(
            Route(
                name=service,
                prefix=f"/api/{service}",
                upstream=upstream,
                strip_to=b"/api",
                connect_timeout_s=connect_timeout_s,
                upstream_timeout_s=upstream_timeout_s,
                max_body_bytes=max_body_bytes,
            )
        )

    config_path = _read(env, "GATEWAY_CONFIG")
    if config_path:
        routes = merge_routes(
            routes,
            load_routes_file(config_path, connect_timeout_s, upstream_timeout_s, max_body_bytes),
        )

    routes = [_with_openapi_path(env, route) for route in routes]
    return Config(
        **values, routes=tuple(routes), workers=workers, workers_reason=workers_reason, config_path=config_path
    )


def _with_openapi_path(env: Mapping[str, str], route: Route) -> Route:
    """``<NAME>_OPENAPI_PATH``: where the backend serves its OpenAPI document."""
    var = route.name.upper().replace("-", "_") + "_OPENAPI_PATH"
    raw = env.get(var, "").strip()
    if not raw:
        return route
    if not raw.startswith("/") or not raw.isascii() or any(c.isspace() or c == "#" for c in raw):
        raise ConfigError(f"{var}={raw!r}: must be an ASCII path starting with '/' (e.g. /openapi.json)")
    return replace(route, openapi_path=raw)


def merge_routes(env_routes: list[Route], file_routes: list[Route]) -> list[Route]:
    """File routes win over an environment service with the same prefix."""
    by_prefix = {r.prefix: r for r in env_routes}
    for route in file_routes:
        by_prefix[route.prefix] = route
    merged = list(by_prefix.values())
    names: dict[str, str] = {}
    for route in merged:
        if route.name in names:
            raise ConfigError(
                f"GATEWAY_CONFIG: routes {names[route.name]!r} and {route.prefix!r} are both named"
                f" {route.name!r}; give one a unique 'name'"
            )
        names[route.name] = route.prefix
    return merged


def load_routes_file(
    path: str, connect_timeout_s: float, upstream_timeout_s: float, max_body_bytes: int
) -> list[Route]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"GATEWAY_CONFIG={path!r}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"GATEWAY_CONFIG={path!r}: {exc}") from None
    unknown = set(data) - {"route"}
    if unknown:
        raise ConfigError(f"GATEWAY_CONFIG={path!r}: unknown table(s) {', '.join(sorted(unknown))}")
    entries = data.get("route", [])
    if not isinstance(entries, list):
        raise ConfigError(f"GATEWAY_CONFIG={path!r}: 'route' must be an array of tables ([[route]])")
    # tomllib gives no positions for values: point at each [[route]] header.
    with open(path, "rb") as fh:
        starts = [n for n, line in enumerate(fh.read().decode("utf-8", "replace").splitlines(), 1)
                  if line.strip().replace(" ", "").startswith("[[route]]")]
    routes: list[Route] = []
    seen: set[str] = set()
    allowed = {"prefix", "upstream", "name", "connect_timeout", "upstream_timeout", "max_body_bytes"}
    for index, entry in enumerate(entries, start=1):
        line = f" (line {starts[index - 1]})" if index <= len(starts) else ""
        where = f"GATEWAY_CONFIG={path!r}: route #{index}{line}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = set(entry) - allowed
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        prefix = entry.get("prefix")
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix == "/":
            raise ConfigError(f"{where}: 'prefix' must be a path like \"/api/billing\"")
        prefix = prefix.rstrip("/")
        segments = prefix.split("/")[1:]
        if not all(_PREFIX_SEGMENT_RE.match(s) for s in segments):
            raise ConfigError(f"{where}: 'prefix' {prefix!r} has an empty or invalid segment")
        if is_reserved(prefix):
            raise ConfigError(f"{where}: 'prefix' {prefix!r} is reserved for the gateway's own endpoints")
        if prefix in seen:
            raise ConfigError(f"{where}: 'prefix' {prefix!r} is declared twice")
        seen.add(prefix)
        raw_url = entry.get("upstream")
        if not isinstance(raw_url, str):
            raise ConfigError(f"{where}: 'upstream' must be a URL string")
        upstream = parse_upstream(f"{where} upstream", raw_url, allow_path=True)
        name = entry.get("name", segments[-1])
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(
                f"{where}: name {name!r} is not a valid service name (lower-case letters, digits, '-' and '_');"
                " set 'name'"
            )
        if name in RESERVED_NAMES:
            raise ConfigError(f"{where}: name {name!r} is reserved for the gateway's own endpoints")
        routes.append(
            Route(
                name=name,
                prefix=prefix,
                upstream=upstream,
                strip_to=upstream.base_path,
                connect_timeout_s=_file_number(entry, "connect_timeout", connect_timeout_s, where),
                upstream_timeout_s=_file_number(entry, "upstream_timeout", upstream_timeout_s, where),
                max_body_bytes=int(_file_number(entry, "max_body_bytes", max_body_bytes, where, integer=True)),
            )
        )
    return routes


def _file_number(entry: dict[str, object], key: str, default: float, where: str, *, integer: bool = False) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{where}: {key!r} must be a {'whole ' if integer else ''}number")
    if not math.isfinite(value) or value < 0 or (not integer and value == 0):
        raise ConfigError(f"{where}: {key!r} must be {'non-negative' if integer else 'positive'}")
    return value
