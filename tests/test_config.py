"""Configuration (README.md, Configuration): defaults, validation, routes file, exit code 2.

``from_env`` is fed explicit mappings, never the test process's environment;
the CLI is run as a real subprocess the way an operator starts it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api import Router
from gateway.config import Config, ConfigError, Route, authority, from_env

ROOT = Path(__file__).resolve().parent.parent


def config_error(env: dict[str, str]) -> str:
    """The ConfigError message for ``env``; fails the test when none is raised."""
    with pytest.raises(ConfigError) as info:
        from_env(env)
    message = str(info.value)
    assert "\n" not in message, "the error must be one line"
    return message


def write(tmp_path: Path, text: str, name: str = "routes.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def route(config: Config, prefix: str) -> Route:
    (found,) = [r for r in config.routes if r.prefix == prefix]
    return found


# ------------------------------------------------------------------ defaults


def test_defaults_match_the_contract_table() -> None:
    """Every variable's default is the one in README.md's Configuration table."""
    c = from_env({})
    assert c.host == "0.0.0.0"
    assert c.port == 8080
    assert [r.name for r in c.routes] == ["service1", "service2"]
    for name in ("service1", "service2"):
        r = route(c, f"/api/{name}")
        assert (r.upstream.scheme, r.upstream.host, r.upstream.port) == ("http", name, 8000)
        assert r.upstream.base_path == b""
        assert r.upstream.display == f"http://{name}:8000"
    assert c.connect_timeout_s == 5
    assert c.upstream_timeout_s == 30
    assert c.max_body_bytes == 10485760
    assert c.max_header_bytes == 65536
    assert c.pool_max_connections == 100
    assert c.pool_timeout_s == 5
    assert c.client_header_timeout_s == 10
    assert c.keepalive_timeout_s == 75
    assert c.max_connections == 20000
    assert c.drain_delay_s == 0
    assert c.shutdown_timeout_s == 30
    assert set(c.trusted_proxies) == {ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")}
    assert c.workers == 1
    assert c.config_path is None
    assert c.access_log is True
    assert c.log_level == "info"
    assert c.recent_size == 100
    assert c.server_timing is False
    assert c.rewrite_location is False


def test_per_route_limits_default_to_the_global_ones() -> None:
    """`GATEWAY_CONNECT_TIMEOUT`, `GATEWAY_UPSTREAM_TIMEOUT` and `GATEWAY_MAX_BODY_BYTES`
    apply to every environment service."""
    c = from_env(
        {"GATEWAY_CONNECT_TIMEOUT": "2.5", "GATEWAY_UPSTREAM_TIMEOUT": "7", "GATEWAY_MAX_BODY_BYTES": "0"}
    )
    for r in c.routes:
        assert (r.connect_timeout_s, r.upstream_timeout_s, r.max_body_bytes) == (2.5, 7, 0)


@pytest.mark.parametrize(
    ("var", "raw", "attr", "value"),
    [
        ("GATEWAY_HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("GATEWAY_PORT", "9090", "port", 9090),
        ("GATEWAY_PORT", "0", "port", 0),
        ("GATEWAY_MAX_BODY_BYTES", "0", "max_body_bytes", 0),
        ("GATEWAY_MAX_HEADER_BYTES", "8192", "max_header_bytes", 8192),
        ("GATEWAY_POOL_MAX_CONNECTIONS", "7", "pool_max_connections", 7),
        ("GATEWAY_POOL_TIMEOUT", "0.5", "pool_timeout_s", 0.5),
        ("GATEWAY_CLIENT_HEADER_TIMEOUT", "3", "client_header_timeout_s", 3),
        ("GATEWAY_KEEPALIVE_TIMEOUT", "0", "keepalive_timeout_s", 0),
        ("GATEWAY_MAX_CONNECTIONS", "10", "max_connections", 10),
        ("GATEWAY_DRAIN_DELAY", "2", "drain_delay_s", 2),
        ("GATEWAY_SHUTDOWN_TIMEOUT", "0", "shutdown_timeout_s", 0),
        ("GATEWAY_WORKERS", "4", "workers", 4),
        ("GATEWAY_ACCESS_LOG", "off", "access_log", False),
        ("GATEWAY_LOG_LEVEL", "debug", "log_level", "debug"),
        ("GATEWAY_RECENT_SIZE", "5", "recent_size", 5),
    ],
)
def test_each_variable_is_read(var: str, raw: str, attr: str, value: object) -> None:
    """Configuration comes from the environment: each variable in the table sets its value."""
    assert getattr(from_env({var: raw}), attr) == value


# ------------------------------------------------------- numeric validation

NUMERIC = [
    "GATEWAY_PORT",
    "GATEWAY_CONNECT_TIMEOUT",
    "GATEWAY_UPSTREAM_TIMEOUT",
    "GATEWAY_MAX_BODY_BYTES",
    "GATEWAY_MAX_HEADER_BYTES",
    "GATEWAY_POOL_MAX_CONNECTIONS",
    "GATEWAY_POOL_TIMEOUT",
    "GATEWAY_CLIENT_HEADER_TIMEOUT",
    "GATEWAY_KEEPALIVE_TIMEOUT",
    "GATEWAY_MAX_CONNECTIONS",
    "GATEWAY_DRAIN_DELAY",
    "GATEWAY_SHUTDOWN_TIMEOUT",
    "GATEWAY_WORKERS",
    "GATEWAY_RECENT_SIZE",
]
INTEGER = {
    "GATEWAY_PORT",
    "GATEWAY_MAX_BODY_BYTES",
    "GATEWAY_MAX_HEADER_BYTES",
    "GATEWAY_POOL_MAX_CONNECTIONS",
    "GATEWAY_MAX_CONNECTIONS",
    "GATEWAY_WORKERS",
    "GATEWAY_RECENT_SIZE",
}


@pytest.mark.parametrize("var", NUMERIC)
@pytest.mark.parametrize("raw", ["notanumber", "1.2.3", "12abc", "-1", "-0.5", "-100000", "nan", "0x10"])
def test_numeric_variables_reject_bad_values_naming_the_variable(var: str, raw: str) -> None:
    """A bad value (unparsable or negative number) stops start-up with one clear line naming the variable."""
    assert var in config_error({var: raw})


@pytest.mark.parametrize("var", sorted(INTEGER))
@pytest.mark.parametrize("raw", ["1.5", "8080.0", "1e3"])
def test_count_variables_reject_fractions(var: str, raw: str) -> None:
    """A port, a byte count or a connection count that is not a whole number is unparsable."""
    assert var in config_error({var: raw})


@given(var=st.sampled_from(NUMERIC), value=st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9)))
def test_any_negative_number_is_rejected(var: str, value: float) -> None:
    """A negative number stops start-up with one clear line naming the variable."""
    assert var in config_error({var: str(value)})


@given(
    var=st.sampled_from(NUMERIC),
    raw=st.text("abcdefghjklmopqrstuvwxyz!@#$^&*()[]{}<>;:'\"~`|\\ ", min_size=1, max_size=12).filter(
        lambda s: s.strip() not in ("", "auto")  # GATEWAY_WORKERS=auto: one per CPU
    ),
)
def test_any_non_numeric_text_is_rejected(var: str, raw: str) -> None:
    """An unparsable number stops start-up with one clear line naming the variable
    (letters and punctuation, no digits: never a number; `nan`/`inf` cannot be spelled here)."""
    assert var in config_error({var: raw})


@pytest.mark.parametrize("raw", ["65536", "100000"])
def test_port_out_of_range_is_rejected(raw: str) -> None:
    """A bad GATEWAY_PORT stops start-up naming the variable (ports are 0-65535)."""
    assert "GATEWAY_PORT" in config_error({"GATEWAY_PORT": raw})


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("GATEWAY_TRUSTED_PROXIES", "not-an-ip"),
        ("GATEWAY_ADMIN_ALLOW", "10.0.0.0/33"),
        ("GATEWAY_ADMIN_ALLOW", "127.0.0.1,everyone"),
        ("GATEWAY_REQUEST_BUFFER_BYTES", "-1"),
        ("GATEWAY_REQUEST_BUFFER_BYTES", "64k"),
        ("GATEWAY_CLIENT_BODY_TIMEOUT", "0"),
        ("GATEWAY_CLIENT_BODY_TIMEOUT", "soon"),
        ("GATEWAY_LOG_LEVEL", "loud"),
        ("GATEWAY_ACCESS_LOG", "maybe"),
    ],
)
def test_other_bad_values_name_their_variable(var: str, raw: str) -> None:
    """A bad value stops start-up with one clear line naming the variable."""
    assert var in config_error({var: raw})


def test_hostile_traffic_settings_default_to_the_contract_and_are_read() -> None:
    """GATEWAY_REQUEST_BUFFER_BYTES (65536), GATEWAY_CLIENT_BODY_TIMEOUT (10) and
    GATEWAY_ADMIN_ALLOW (loopback and the private ranges) as the contract's table says."""
    c = from_env({})
    assert c.request_buffer_bytes == 65536
    assert c.client_body_timeout_s == 10
    assert set(c.admin_allow) == {
        ipaddress.ip_network(n)
        for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
    }
    c = from_env({"GATEWAY_REQUEST_BUFFER_BYTES": "1024", "GATEWAY_CLIENT_BODY_TIMEOUT": "2.5",
                  "GATEWAY_ADMIN_ALLOW": " 10.1.0.0/16 , 2001:db8::/32"})
    assert (c.request_buffer_bytes, c.client_body_timeout_s) == (1024, 2.5)
    assert c.admin_allow == (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8::/32"))


# ------------------------------------------------------------- backend URLs


@pytest.mark.parametrize(
    "raw",
    [
        "service1:8000",  # no scheme
        "//service1:8000",  # no scheme
        "service1",  # no scheme
        "http://",  # no host
        "http:///api",  # no host
        "http://:8000",  # no host
        "https://service1:8443",  # https upstreams are not supported
        "ftp://service1",
        "http://service1:8000/api",  # a path: only a routes file may set a base path
        "http://service1:notaport",
        "http://service1:70000",
        "http://service1:8000?x=1",
        "http://service1:8000#frag",
    ],
)
def test_bad_backend_url_is_rejected_naming_the_variable(raw: str) -> None:
    """A URL without scheme or host (or not a plain http origin) stops start-up naming `<NAME>_URL`."""
    assert "SERVICE1_URL" in config_error({"GATEWAY_SERVICES": "service1", "SERVICE1_URL": raw})


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        ("http://10.0.0.5:9000", "10.0.0.5", 9000),
        ("http://backend", "backend", 80),
        ("http://backend/", "backend", 80),
        ("HTTP://Backend:8000", "backend", 8000),
        ("http://[::1]:8000", "::1", 8000),
    ],
)
def test_backend_origin_is_parsed(raw: str, host: str, port: int) -> None:
    """`<NAME>_URL` is the origin of backend `<name>`."""
    (r,) = from_env({"GATEWAY_SERVICES": "service1", "SERVICE1_URL": raw}).routes
    assert (r.upstream.scheme, r.upstream.host, r.upstream.port) == ("http", host, port)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("http://alice:s3cret@backend:8000", "http://***@backend:8000"),
        ("http://alice@backend:8000", "http://***@backend:8000"),
        ("http://:s3cret@backend:8000", "http://***@backend:8000"),
    ],
)
def test_userinfo_is_redacted_in_display(raw: str, shown: str) -> None:
    """`/api/gateway/services` shows each upstream with userinfo in a URL redacted."""
    (r,) = from_env({"GATEWAY_SERVICES": "service1", "SERVICE1_URL": raw}).routes
    assert r.upstream.display == shown
    assert "s3cret" not in r.upstream.display and "alice" not in r.upstream.display
    assert r.upstream.host == "backend"


# ------------------------------------------------------------ service names


def test_adding_a_backend_is_configuration_only() -> None:
    """`GATEWAY_SERVICES=service1,service2,billing` plus `BILLING_URL` routes `/api/billing/*`."""
    c = from_env({"GATEWAY_SERVICES": "service1,service2,billing", "BILLING_URL": "http://billing.internal:9000"})
    r = route(c, "/api/billing")
    assert r.name == "billing"
    assert (r.upstream.host, r.upstream.port) == ("billing.internal", 9000)
    m = Router(c.routes).match(b"/api/billing/invoices/7?x=1")
    assert m is not None and m.route is not None and m.route.name == "billing"
    assert m.upstream_target == b"/api/invoices/7?x=1"


def test_unset_url_defaults_to_the_service_name() -> None:
    """`<NAME>_URL` defaults to `http://<name>:8000`."""
    r = route(from_env({"GATEWAY_SERVICES": "billing"}), "/api/billing")
    assert (r.upstream.host, r.upstream.port) == ("billing", 8000)


def test_dash_in_a_name_is_underscore_in_its_variable() -> None:
    """`<NAME>_URL`: NAME upper-cased, `-` as `_` (`my-svc` reads `MY_SVC_URL`)."""
    c = from_env(
        {"GATEWAY_SERVICES": "my-svc", "MY_SVC_URL": "http://right:1234", "MY-SVC_URL": "http://wrong:1"}
    )
    r = route(c, "/api/my-svc")
    assert (r.upstream.host, r.upstream.port) == ("right", 1234)
    assert "MY_SVC_URL" in config_error({"GATEWAY_SERVICES": "my-svc", "MY_SVC_URL": "nope"})


def test_openapi_path_variable(tmp_path):
    """Configuration: `<NAME>_OPENAPI_PATH` is a path on the backend's origin; a bad one stops start-up naming it."""
    (route,) = from_env({"GATEWAY_SERVICES": "my-svc", "MY_SVC_OPENAPI_PATH": "/docs/openapi.json"}).routes
    assert route.openapi_path == "/docs/openapi.json"
    (route,) = from_env({"GATEWAY_SERVICES": "my-svc"}).routes
    assert route.openapi_path == "/openapi.json"
    for bad in ("openapi.json", "/a b", "http://x/openapi.json"):
        with pytest.raises(ConfigError, match="MY_SVC_OPENAPI_PATH"):
            from_env({"GATEWAY_SERVICES": "my-svc", "MY_SVC_OPENAPI_PATH": bad})


def test_spaces_around_names_are_ignored() -> None:
    """`GATEWAY_SERVICES` is a comma-separated list of names."""
    c = from_env({"GATEWAY_SERVICES": " service1 , billing "})
    assert [r.prefix for r in c.routes] == ["/api/service1", "/api/billing"]


@pytest.mark.parametrize("services", ["service1,service1", "billing,service2,billing"])
def test_duplicate_service_names_are_rejected(services: str) -> None:
    """A duplicate name stops start-up with one line naming the variable."""
    assert "GATEWAY_SERVICES" in config_error({"GATEWAY_SERVICES": services})


@pytest.mark.parametrize("services", ["gateway", "service1,gateway"])
def test_reserved_name_gateway_is_rejected(services: str) -> None:
    """`gateway` is a reserved service name: it stops start-up naming the variable."""
    assert "GATEWAY_SERVICES" in config_error({"GATEWAY_SERVICES": services})


@pytest.mark.parametrize("name", ["a/b", "a b", "a?b", "a#b", "a%2Fb", "../x", "a.b/c", "-", "é"])
def test_invalid_service_names_are_rejected(name: str) -> None:
    """A name must make one path segment `/api/<name>` and one variable `<NAME>_URL`;
    anything else stops start-up naming GATEWAY_SERVICES."""
    assert "GATEWAY_SERVICES" in config_error({"GATEWAY_SERVICES": f"service1,{name}"})


# ---------------------------------------------------------------- routes file

BILLING = """
[[route]]
prefix = "/api/billing"            # whole segments
upstream = "http://billing:8000/api"
connect_timeout = 2                # optional, seconds
upstream_timeout = 10              # optional, seconds
max_body_bytes = 1048576           # optional
"""


def test_routes_file_adds_routes_with_their_own_limits(tmp_path: Path) -> None:
    """A routes file adds explicit routes with optional per-route timeouts and body limit."""
    c = from_env({"GATEWAY_CONFIG": write(tmp_path, BILLING), "GATEWAY_CONNECT_TIMEOUT": "9"})
    assert {r.prefix for r in c.routes} == {"/api/service1", "/api/service2", "/api/billing"}
    r = route(c, "/api/billing")
    assert (r.upstream.host, r.upstream.port, r.upstream.base_path) == ("billing", 8000, b"/api")
    assert (r.connect_timeout_s, r.upstream_timeout_s, r.max_body_bytes) == (2, 10, 1048576)
    # The environment services keep the global values.
    assert route(c, "/api/service1").connect_timeout_s == 9


def test_routes_file_optional_keys_default_to_the_environment(tmp_path: Path) -> None:
    """Per-route values are optional: without them the route uses the GATEWAY_* values."""
    path = write(tmp_path, '[[route]]\nprefix = "/v2/orders"\nupstream = "http://orders:8000"\n')
    c = from_env(
        {
            "GATEWAY_CONFIG": path,
            "GATEWAY_CONNECT_TIMEOUT": "3",
            "GATEWAY_UPSTREAM_TIMEOUT": "4",
            "GATEWAY_MAX_BODY_BYTES": "5",
        }
    )
    r = route(c, "/v2/orders")
    assert (r.connect_timeout_s, r.upstream_timeout_s, r.max_body_bytes) == (3, 4, 5)


@pytest.mark.parametrize(
    ("target", "upstream_target"),
    [
        (b"/api/billing/invoices?x=1", b"/api/invoices?x=1"),
        (b"/api/billing/invoices", b"/api/invoices"),
        (b"/api/billing", b"/api"),
        (b"/api/billing?x=1", b"/api?x=1"),
        (b"/api/billing/a%2Fb/../c", b"/api/a%2Fb/../c"),
    ],
)
def test_routes_file_path_is_appended_to_the_upstream_path(
    tmp_path: Path, target: bytes, upstream_target: bytes
) -> None:
    """`/api/billing/invoices?x=1` then goes to `http://billing:8000/api/invoices?x=1`."""
    c = from_env({"GATEWAY_CONFIG": write(tmp_path, BILLING)})
    m = Router(c.routes).match(target)
    assert m is not None and m.route is not None
    assert m.route.prefix == "/api/billing"
    assert m.upstream_target == upstream_target


def test_routes_file_with_origin_upstream_sends_the_rest_from_the_root(tmp_path: Path) -> None:
    """The path after `prefix` is appended to the upstream URL's path (empty for an origin)."""
    path = write(tmp_path, '[[route]]\nprefix = "/v2/orders"\nupstream = "http://orders:8000"\n')
    router = Router(from_env({"GATEWAY_CONFIG": path}).routes)
    for target, want in [(b"/v2/orders/7?x", b"/7?x"), (b"/v2/orders", b"/"), (b"/v2/orders?x", b"/?x")]:
        m = router.match(target)
        assert m is not None and m.upstream_target == want


BAD_FILES = {
    "syntax": '[[route]\nprefix = "/api/x"\n',
    "unterminated string": '[[route]]\nprefix = "/api/x\nupstream = "http://x:8000"\n',
    "unknown key": '[[route]]\nprefix = "/api/x"\nupstream = "http://x:8000"\nretries = 3\n',
    "unknown table": '[server]\nport = 1\n',
    "missing prefix": '[[route]]\nupstream = "http://x:8000"\n',
    "missing upstream": '[[route]]\nprefix = "/api/x"\n',
    "relative prefix": '[[route]]\nprefix = "api/x"\nupstream = "http://x:8000"\n',
    "root prefix": '[[route]]\nprefix = "/"\nupstream = "http://x:8000"\n',
    "empty segment": '[[route]]\nprefix = "/api//x"\nupstream = "http://x:8000"\n',
    "reserved prefix": '[[route]]\nprefix = "/api/gateway"\nupstream = "http://x:8000"\n',
    "under reserved prefix": '[[route]]\nprefix = "/api/gateway/status"\nupstream = "http://x:8000"\n',
    "health": '[[route]]\nprefix = "/health"\nupstream = "http://x:8000"\n',
    "duplicate prefix": (
        '[[route]]\nprefix = "/api/x"\nupstream = "http://x:8000"\n'
        '[[route]]\nprefix = "/api/x"\nupstream = "http://y:8000"\n'
    ),
    "duplicate prefix, trailing slash": (
        '[[route]]\nprefix = "/api/x"\nupstream = "http://x:8000"\n'
        '[[route]]\nprefix = "/api/x/"\nupstream = "http://y:8000"\n'
    ),
    "https upstream": '[[route]]\nprefix = "/api/x"\nupstream = "https://x:8443"\n',
    "upstream without host": '[[route]]\nprefix = "/api/x"\nupstream = "http:///api"\n',
    "upstream without scheme": '[[route]]\nprefix = "/api/x"\nupstream = "x:8000/api"\n',
    "negative timeout": '[[route]]\nprefix = "/api/x"\nupstream = "http://x:8000"\nconnect_timeout = -1\n',
    "string timeout": '[[route]]\nprefix = "/api/x"\nupstream = "http://x:8000"\nupstream_timeout = "10"\n',
    "negative body limit": '[[route]]\nprefix = "/api/x"\nupstream = "http://x:8000"\nmax_body_bytes = -1\n',
    "route not a table array": 'route = "x"\n',
}


@pytest.mark.parametrize("text", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_invalid_routes_file_is_rejected_naming_gateway_config(tmp_path: Path, text: str) -> None:
    """A bad routes file stops start-up with one clear line naming GATEWAY_CONFIG."""
    assert "GATEWAY_CONFIG" in config_error({"GATEWAY_CONFIG": write(tmp_path, text)})


def test_missing_routes_file_is_rejected_naming_gateway_config(tmp_path: Path) -> None:
    """A routes file that cannot be read stops start-up naming GATEWAY_CONFIG."""
    assert "GATEWAY_CONFIG" in config_error({"GATEWAY_CONFIG": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize(
    "text",
    [
        # Two routes whose names default to the same last segment.
        '[[route]]\nprefix = "/api/billing"\nupstream = "http://a:8000"\n'
        '[[route]]\nprefix = "/v2/billing"\nupstream = "http://b:8000"\n',
        # A route that takes an environment service's name for another prefix.
        '[[route]]\nprefix = "/v2/orders"\nname = "service1"\nupstream = "http://b:8000"\n',
        '[[route]]\nprefix = "/v2/service1"\nupstream = "http://b:8000"\n',
    ],
    ids=["default names collide", "explicit env name", "default env name"],
)
def test_duplicate_route_names_are_rejected_or_made_unique(tmp_path: Path, text: str) -> None:
    """Duplicate names stop start-up: every route keeps its own name (the access log's `service`,
    `/api/gateway/services`, the per-backend pool), so two routes never share one."""
    try:
        c = from_env({"GATEWAY_SERVICES": "service1", "GATEWAY_CONFIG": write(tmp_path, text)})
    except ConfigError as exc:
        assert "GATEWAY_CONFIG" in str(exc)
        return
    names = [r.name for r in c.routes]
    assert len(names) == len(set(names)), f"routes share a name: {names}"


def test_routes_file_cannot_name_a_route_gateway(tmp_path: Path) -> None:
    """`gateway` is a reserved service name: a routes file cannot bypass it with `name`."""
    text = '[[route]]\nprefix = "/v2/x"\nname = "gateway"\nupstream = "http://b:8000"\n'
    assert "GATEWAY_CONFIG" in config_error({"GATEWAY_CONFIG": write(tmp_path, text)})


# --------------------------------------------------------------- exit code 2


def run_gateway(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWAY_") and not k.endswith("_URL") and not k.startswith("PYTEST")
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env={**clean, "GATEWAY_HOST": "127.0.0.1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"GATEWAY_PORT": "notanumber"}, "GATEWAY_PORT"),
        ({"GATEWAY_PORT": "-1"}, "GATEWAY_PORT"),
        ({"SERVICE1_URL": "ftp://x"}, "SERVICE1_URL"),
        ({"GATEWAY_SERVICES": "service1,gateway"}, "GATEWAY_SERVICES"),
        ({"GATEWAY_UPSTREAM_TIMEOUT": "soon"}, "GATEWAY_UPSTREAM_TIMEOUT"),
        ({"GATEWAY_CONFIG": "/nonexistent/routes.toml"}, "GATEWAY_CONFIG"),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_bad_value_exits_2_with_one_line_naming_the_variable(
    tmp_path: Path, env: dict[str, str], var: str
) -> None:
    """A bad value stops start-up with one clear line naming the variable, exit code 2."""
    proc = run_gateway(tmp_path, **env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert var in lines[0]


def test_bad_routes_file_syntax_exits_2_with_one_line(tmp_path: Path) -> None:
    """A bad routes file stops start-up with one clear line naming GATEWAY_CONFIG, exit code 2."""
    path = write(tmp_path, '[[route]\nprefix = "/api/x"\n')
    proc = run_gateway(tmp_path, GATEWAY_CONFIG=path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "GATEWAY_CONFIG" in lines[0], proc.stderr


@pytest.mark.parametrize("path", ["/caf\u00e9", "/a b"])
def test_routes_file_upstream_path_must_be_printable_ascii(tmp_path: Path, path: str) -> None:
    """A non-ASCII or spaced upstream path is refused at start-up (one check, one message)."""
    text = f'[[route]]\nprefix = "/api/x"\nupstream = "http://billing:8000{path}"\n'
    message = config_error({"GATEWAY_CONFIG": write(tmp_path, text)})
    assert "URL path must be printable ASCII" in message


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [("example.com", 80, "example.com:80"), ("127.0.0.1", 8000, "127.0.0.1:8000"),
     ("::1", 8000, "[::1]:8000"), ("fe80::1", None, "[fe80::1]")],
)
def test_authority_brackets_ipv6_addresses(host: str, port: int | None, expected: str) -> None:
    assert authority(host, port) == expected


def test_an_ipv6_upstream_has_bracketed_origin_and_host() -> None:
    (route,) = from_env({"GATEWAY_SERVICES": "svc", "SVC_URL": "http://[::1]:8000"}).routes
    assert route.upstream.origin == "http://[::1]:8000" and route.host_header == b"[::1]:8000"
    assert route.upstream.display == "http://[::1]:8000"
