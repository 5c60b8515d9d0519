"""compose.yaml, offline (issue 14): the gateway is published on 127.0.0.1 only,
with a comment saying how to expose it, and the examples image is built once and
run by both backends; and the wiring: the gateway's environment routes to both
backends and is a valid configuration, health checks without curl, a stop grace
period that covers the drain. Running it from the built images:
tests/test_deploy_docker.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import from_env
from tests.deploy_helpers import _compose_env, _compose_healthcheck_argv, _published, _seconds

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
BACKENDS = ("service1", "service2")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _host_ips(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, published, target) of each published port, short or long syntax; "" = every interface."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])))
            continue
        spec = str(port).split("/")[0]
        if spec.startswith("["):  # [::1]:8080:8080
            ip, rest = spec[1:].split("]:", 1)
            published, target = rest.split(":")
        else:
            parts = spec.split(":")
            ip = parts[0] if len(parts) == 3 else ""
            published, target = (parts[-2], parts[-1]) if len(parts) > 1 else ("", parts[-1])
        out.append((ip, published, target))
    return out


def test_gateway_is_published_on_loopback_only(services):
    """A laptop's compose up must not put the gateway on every interface."""
    assert _host_ips(services["gateway"]) == [("127.0.0.1", "8080", "8080")]
    for name in BACKENDS:
        assert not services[name].get("ports"), f"{name} is reachable only through the gateway"


def test_compose_says_how_to_expose_the_gateway():
    text = COMPOSE.read_text()
    ports = text[text.index("    ports:"):text.index('"127.0.0.1:8080:8080"')]
    assert '"8080:8080"' in ports and "#" in ports, "a comment next to the port says how to expose it"


def test_examples_image_is_built_once_and_run_by_both_backends(services):
    builds = {name: s["build"] for name, s in services.items() if "build" in s and name != "gateway"}
    assert list(builds) == ["service1"], builds
    build = builds["service1"]
    assert build["context"] == "." and build["dockerfile"] == "examples/Dockerfile"
    images = {services[name].get("image") for name in BACKENDS}
    assert len(images) == 1 and None not in images, "both backends run the one image service1 builds"
    assert services["gateway"].get("image") not in images
    for name in BACKENDS:
        assert services[name]["command"][:2] == ["uvicorn", f"examples.{name}:app"]


def test_compose_wiring(services: dict[str, Any]) -> None:
    assert set(services) == {"gateway", *BACKENDS}
    gw = services["gateway"]
    assert gw["build"]["context"] == "." and gw["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert ("8080", "8080") in _published(gw)
    env = _compose_env(gw)
    assert env["GATEWAY_SERVICES"].split(",") == list(BACKENDS)
    config = from_env(env)  # the gateway accepts it (raises ConfigError otherwise)
    assert config.port == 8080
    for name in BACKENDS:
        backend = services[name]
        # Both run the examples image, built once: tests/test_compose.py.
        command = backend["command"]
        assert command[:2] == ["uvicorn", f"examples.{name}:app"]
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert env[f"{name.upper()}_URL"] == f"http://{name}:{command[command.index('--port') + 1]}"
        assert gw["depends_on"][name] == {"condition": "service_healthy"}
    for name, service in services.items():
        check = service["healthcheck"]
        argv = _compose_healthcheck_argv(check["test"])
        assert argv[0] == "python" and not re.search(r"\b(curl|wget)\b", " ".join(argv)), name
        assert not check.get("disable", False)
    assert "/health" in " ".join(_compose_healthcheck_argv(gw["healthcheck"]["test"]))
    # docker stop waits long enough for the drain.
    assert gw.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = _seconds(gw.get("stop_grace_period", "10s"))
    assert grace >= config.drain_delay_s + config.shutdown_timeout_s, (grace, config)
