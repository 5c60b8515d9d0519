"""The Dockerfiles (issue 6; docs/deploy.md), checked without a container engine.

This machine has no Docker engine and cannot pull base images, so nothing here
builds or runs an image. Instead both Dockerfiles are parsed and checked for the
points of the issue, and their install steps run for real: a small emulator
(tests/deploy_helpers.py) replays each Dockerfile's stages on a temporary directory
standing in for the image's filesystem (the build context filtered by
.dockerignore, COPY, WORKDIR, ENV, and every ``RUN ... uv sync ...`` exactly as
written, with the host's ``uv`` standing in for the one copied from
``ghcr.io/astral-sh/uv``). The runtime stage keeps only what it copies from the
builder. The result is then run the way compose.yaml runs it: both example
backends with their compose commands, gated by their compose health checks
(``depends_on: service_healthy``), the gateway from its fresh venv with the compose
environment, requests through it to both services, the image and compose health
checks, SIGTERM, exit 0; and the Kubernetes pod's environment on the same image.

What stays unverified here: the base images themselves (``python:3.11-slim``,
``ghcr.io/astral-sh/uv``), ``RUN`` steps other than ``uv sync`` (the user
creation), BuildKit cache mounts, container networking and DNS, and a real
cluster (see docs/deploy.md).
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.config import from_env
from tests.backends import free_port
from tests.deploy_helpers import (
    BACKENDS,
    EXAMPLES_DOCKERFILE,
    GATEWAY_DOCKERFILE,
    ROOT,
    Built,
    Proc,
    _check,
    _compose_env,
    _compose_healthcheck_argv,
    _dockerignore_patterns,
    _env_pairs,
    _gateway_env,
    _healthcheck_argv,
    _http,
    _ignored,
    _requirement_name,
    _start,
    _wait_healthy,
    _with_port,
    build_context,
    emulate_build,
    load_compose,
    load_kustomization,
    load_manifests,
    parse_dockerfile,
)
from tests.integration.helpers import wait_for


@pytest.fixture(scope="module")
def uv() -> str:
    path = shutil.which("uv")
    if path is None:
        pytest.skip("uv is not on PATH: cannot exercise the Dockerfiles' `uv sync` steps (install uv: pip install uv)")
    return path


@pytest.fixture(scope="module")
def python311() -> str:
    """The image's Python is 3.11; the emulated builds use a 3.11 from this host (UV_PYTHON_DOWNLOADS=never)."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        pytest.skip("no Python 3.11 on this host to stand in for the image's python:3.11")
    return found


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("context")
    build_context(dest)
    return dest


@pytest.fixture(scope="module")
def gateway_image(uv: str, python311: str, context: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("gateway-image")
    return emulate_build(parse_dockerfile(GATEWAY_DOCKERFILE), context, work, python311)


@pytest.fixture(scope="module")
def examples_image(uv: str, python311: str, context: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("examples-image")
    return emulate_build(parse_dockerfile(EXAMPLES_DOCKERFILE), context, work, python311)


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return load_manifests(load_kustomization())


# ------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("path", [GATEWAY_DOCKERFILE, EXAMPLES_DOCKERFILE], ids=["gateway", "examples"])
def test_dockerfile_is_multistage_uv_slim_nonroot(path: Path) -> None:
    df = parse_dockerfile(path)
    assert len(df.stages) >= 2, "multi-stage: a builder and a runtime"
    builder = df.stage("builder")
    final = df.final
    assert final is not builder
    # The venv links to the builder's interpreter: the same slim Python 3.11 base in both.
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", final.base), final.base
    assert builder.base == final.base
    syncs = [i.args for i in builder.all("RUN") if "uv sync" in i.args]
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs), syncs
    # uv comes from the official image or pip, and stays in the builder.
    uv_stages = {s.name for s in df.stages if s.base.startswith("ghcr.io/astral-sh/uv")}
    assert uv_stages or any("pip install" in i.args and "uv" in i.args for i in builder.all("RUN"))
    for ins in final.all("COPY"):
        assert ins.flags.get("from") not in uv_stages, "no uv in the runtime image"
        assert ins.flags.get("from") in (None, "builder"), ins.args
    venv = dict(_env_pairs(" ".join(i.args for i in builder.all("ENV")))).get("UV_PROJECT_ENVIRONMENT")
    assert venv, "the builder names its venv (UV_PROJECT_ENVIRONMENT) so the runtime copies exactly it"
    assert [i.args.split()[0] for i in final.all("COPY") if i.flags.get("from") == "builder"] == [venv]
    # Non-root, and USER comes after every RUN of the final stage.
    user = final.last("USER")
    assert user is not None and user.args.split(":")[0] not in ("root", "0"), "runs as a non-root user"
    runs_after_user = final.instructions[final.instructions.index(user) :]
    assert not [i for i in runs_after_user if i.cmd == "RUN"]
    assert final.last("EXPOSE") is not None
    stop = final.last("STOPSIGNAL")
    assert stop is not None and stop.args == "SIGTERM"
    health = final.last("HEALTHCHECK")
    assert health is not None
    argv = _healthcheck_argv(health)
    assert argv[0] == "python", "the health check uses the image's Python"
    assert not re.search(r"\b(curl|wget)\b", health.args), "slim images have no curl/wget"
    cmd = final.last("CMD")
    assert cmd is not None and cmd.exec_form(), "CMD in exec form: the process is PID 1 and gets SIGTERM itself"


def test_gateway_dockerfile_specifics() -> None:
    df = parse_dockerfile(GATEWAY_DOCKERFILE)
    builder, final = df.stage("builder"), df.final
    # Dependencies before code: the first `uv sync` runs with only the lock and
    # pyproject in place, so a code edit does not rebuild the dependency layer.
    steps = builder.instructions
    first_sync = next(n for n, i in enumerate(steps) if i.cmd == "RUN" and "uv sync" in i.args)
    assert "--no-install-project" in steps[first_sync].args
    copied_before = [
        src for i in steps[:first_sync] if i.cmd == "COPY" and "from" not in i.flags for src in i.args.split()[:-1]
    ]
    assert sorted(copied_before) == ["pyproject.toml", "uv.lock"], copied_before
    code_copy = next(n for n, i in enumerate(steps) if i.cmd == "COPY" and i.args.split()[0].rstrip("/") == "gateway")
    assert first_sync < code_copy
    last_sync = max(n for n, i in enumerate(steps) if i.cmd == "RUN" and "uv sync" in i.args)
    assert code_copy < last_sync and "--no-install-project" not in steps[last_sync].args
    assert final.last("EXPOSE").args.split()[0].split("/")[0] == "8080"
    assert final.last("CMD").exec_form() in (["gateway"], ["python", "-m", "gateway"])
    assert "/health" in final.last("HEALTHCHECK").args
    # Configuration only through the environment: no backend baked into the image.
    for stage in df.stages:
        for key, _ in _env_pairs(" ".join(i.args for i in stage.all("ENV"))):
            assert key != "GATEWAY_SERVICES" and not key.endswith("_URL") and key != "GATEWAY_CONFIG", key


def test_examples_dockerfile_specifics() -> None:
    df = parse_dockerfile(EXAMPLES_DOCKERFILE)
    syncs = [i.args for i in df.stage("builder").all("RUN") if "uv sync" in i.args]
    assert any("--group examples" in s for s in syncs), syncs
    final = df.final
    assert final.last("EXPOSE").args.split()[0] == "8000"
    cmd = final.last("CMD").exec_form()
    assert cmd[:2] == ["uvicorn", "examples.service1:app"] and "0.0.0.0" in cmd and "8000" in cmd


def test_dockerignore_keeps_the_context_small_and_complete(tmp_path: Path) -> None:
    patterns = _dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_api.py", "gateway/__pycache__/cli.cpython-311.pyc"):
        assert _ignored(path, patterns), f"{path} must stay out of the build context"
    files = build_context(tmp_path)
    assert not [f for f in files if f.startswith((".venv/", ".git/"))]
    # Everything the Dockerfiles COPY from the context is in it.
    for path in (GATEWAY_DOCKERFILE, EXAMPLES_DOCKERFILE):
        for stage in parse_dockerfile(path).stages:
            for ins in stage.all("COPY"):
                if "from" not in ins.flags:
                    for src in shlex.split(ins.args)[:-1]:
                        assert glob.glob(str(tmp_path / src)), f"{path.name}: COPY {src}: excluded by .dockerignore"
    size = sum((tmp_path / f).stat().st_size for f in files)
    assert size < 5_000_000, f"build context is {size} bytes: {files}"


# ------------------------------------------------ install steps, for real


def test_gateway_image_installs_runtime_only(gateway_image: Built, pyproject: dict[str, Any], context: Path) -> None:
    runtime = {_requirement_name(r) for r in pyproject["project"]["dependencies"]}
    not_runtime = {
        _requirement_name(r)
        for group in pyproject["dependency-groups"].values()
        for r in group
        if isinstance(r, str)
    } - runtime
    assert {"fastapi", "uvicorn", "pytest"} <= not_runtime
    (deps_cmd, deps_layer), (_, final_layer) = gateway_image.uv_syncs[0], gateway_image.uv_syncs[-1]
    # The dependency layer installs every runtime dependency from the lock alone.
    assert runtime <= deps_layer and "gateway" not in deps_layer, (deps_cmd, deps_layer)
    assert final_layer == deps_layer | {"gateway"}, final_layer
    assert not final_layer & not_runtime, f"dev/examples packages in the runtime venv: {final_layer & not_runtime}"
    # The runtime stage holds the venv and nothing else of the build (no source tree, no uv).
    image_paths = {str(p.relative_to(gateway_image.root)) for p in gateway_image.root.iterdir()}
    assert image_paths == {"app"}, image_paths
    assert [p.name for p in gateway_image.host_path("/app").iterdir()] == [".venv"]
    # The whole package is in the venv (static assets too), compiled: the image needs
    # no write access to its root filesystem.
    site = next(gateway_image.host_path("/app/.venv").glob("lib/python*/site-packages"))
    sources = {
        str(p.relative_to(context))
        for p in (context / "gateway").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    missing = {f for f in sources if not (site / f).is_file()}
    assert not missing, f"files of gateway/ missing from the installed package: {missing}"
    assert list((site / "gateway" / "__pycache__").glob("cli.*.pyc")), "bytecode compiled at build time"
    skipped = [s for s in gateway_image.skipped if not s.startswith(("RUN groupadd", "COPY --from=uv"))]
    assert not skipped, f"steps the emulation did not run: {skipped}"


def test_examples_image_installs_the_examples_group(examples_image: Built) -> None:
    packages = examples_image.uv_syncs[-1][1]
    assert {"fastapi", "uvicorn"} <= packages
    assert not packages & {"pytest", "hypothesis", "kubernetes-validate", "gateway"}, packages
    assert (examples_image.host_path("/app/examples") / "service1.py").is_file()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.popen.poll() is None:
            p.popen.kill()
        p.popen.wait(10)


def test_compose_stack_runs_from_the_built_images(
    gateway_image: Built, examples_image: Built, compose: dict[str, Any], procs: list[Proc], tmp_path: Path
) -> None:
    """compose.yaml's three services, run from the emulated images on loopback ports."""
    services = compose["services"]
    backend_ports: dict[str, int] = {}
    env = examples_image.host_env()
    cwd = examples_image.host_path(examples_image.workdir)
    # Both backends with their compose commands, in parallel.
    for name in BACKENDS:
        port = backend_ports[name] = free_port()
        procs.append(_start(name, _with_port(services[name]["command"], port), cwd, env, tmp_path))
    # depends_on: condition: service_healthy -- the backends' own compose health checks.
    for proc in procs:
        test = services[proc.name]["healthcheck"]["test"]
        check = _with_port(_compose_healthcheck_argv(test), backend_ports[proc.name])
        _wait_healthy(proc, check, env, cwd)

    # The gateway with compose's environment; service DNS names become the loopback ports.
    gw_env = dict(_compose_env(services["gateway"]))
    for name in BACKENDS:
        url = urlsplit(gw_env[f"{name.upper()}_URL"])
        assert (url.hostname, url.port) == (name, 8000)
        gw_env[f"{name.upper()}_URL"] = f"http://127.0.0.1:{backend_ports[name]}"
    port = free_port()
    drain_delay_s = 1.0
    gw_env |= {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_DRAIN_DELAY": str(drain_delay_s)}
    env = gateway_image.host_env(**gw_env)
    cwd = gateway_image.host_path(gateway_image.workdir)  # holds only the venv: no source tree to lean on
    gateway = _start("gateway", gateway_image.cmd, cwd, env, tmp_path)
    procs.append(gateway)
    assert str(shutil.which(gateway_image.cmd[0], path=env["PATH"])).startswith(str(gateway_image.root))
    image_check = gateway_image.healthcheck
    compose_check = _compose_healthcheck_argv(services["gateway"]["healthcheck"]["test"])
    assert image_check is not None
    _wait_healthy(gateway, image_check, env, cwd)
    assert _check(compose_check, env, cwd) == 0

    status, headers, body = _http(port, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = _http(port, "GET", "/api/service1/orders")
    assert status == 200, body
    assert headers["X-Service"] == "service1" and isinstance(json.loads(body), list)
    payload = json.dumps({"to": "a@b.c", "message": "hi"}).encode()
    status, headers, body = _http(
        port, "POST", "/api/service2/notifications/send", payload, {"Content-Type": "application/json"}
    )
    assert status == 202, body
    assert headers["X-Service"] == "service2"

    # docker stop: SIGTERM -> /health 503 draining (both health checks fail) -> exit 0.
    gateway.popen.send_signal(signal.SIGTERM)
    assert wait_for(lambda: _check(image_check, env, cwd) != 0, drain_delay_s), "health check still passing while draining"
    assert gateway.popen.wait(15) == 0, gateway.output()
    assert _check(compose_check, env, cwd) != 0


def test_kubernetes_pod_environment_runs_from_the_image(
    gateway_image: Built, manifests: dict[str, dict[str, Any]], procs: list[Proc], tmp_path: Path
) -> None:
    """The pod's environment (ConfigMap + Deployment env, GATEWAY_WORKERS included) on the built image."""
    pod_env = _gateway_env(manifests)
    config = from_env(pod_env)
    grace = manifests["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    port = free_port()
    # Loopback instead of the pod IP, and a shorter drain delay to keep the test fast.
    env = gateway_image.host_env(
        **(pod_env | {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_DRAIN_DELAY": "0.5"})
    )
    cwd = gateway_image.host_path(gateway_image.workdir)
    gateway = _start("gateway-pod", gateway_image.cmd, cwd, env, tmp_path)
    procs.append(gateway)
    assert gateway_image.healthcheck is not None
    _wait_healthy(gateway, gateway_image.healthcheck, env, cwd)
    for _ in range(4 * config.workers):  # whichever worker takes the connection
        status, _, body = _http(port, "GET", "/health")
        assert status == 200, body
    gateway.popen.send_signal(signal.SIGTERM)  # what the kubelet sends
    started = time.monotonic()
    assert gateway.popen.wait(grace) == 0, gateway.output()
    assert time.monotonic() - started < grace
