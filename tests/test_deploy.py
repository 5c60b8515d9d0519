"""The deploy files (issue 6; docs/deploy.md), checked without a container engine.

This machine has no Docker engine and cannot pull base images, so nothing here
builds or runs an image. Instead:

- the Kubernetes manifests in deploy/kubernetes are validated offline against
  the Kubernetes JSON schemas shipped in ``kubernetes_validate`` (strict: no
  unknown fields), and checked for what ties them together;
- compose.yaml is parsed and its wiring checked;
- both Dockerfiles are parsed and checked for the points of the issue;
- and the Dockerfiles' install steps run for real: a small emulator replays each
  Dockerfile's stages on a temporary directory standing in for the image's
  filesystem (the build context filtered by .dockerignore, COPY, WORKDIR, ENV,
  and every ``RUN ... uv sync ...`` exactly as written, with the host's ``uv``
  standing in for the one copied from ``ghcr.io/astral-sh/uv``). The runtime
  stage keeps only what it copies from the builder. The result is then run the
  way compose.yaml runs it: both example backends with their compose commands,
  gated by their compose health checks (``depends_on: service_healthy``), the
  gateway from its fresh venv with the compose environment, requests through
  it to both services, the image and compose health checks, SIGTERM, exit 0.

What stays unverified here: the base images themselves (``python:3.11-slim``,
``ghcr.io/astral-sh/uv``), ``RUN`` steps other than ``uv sync`` (the user
creation), BuildKit cache mounts, container networking and DNS, and a real
cluster (see docs/deploy.md).
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.config import from_env
from tests.backends import free_port

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "compose.yaml"
GATEWAY_DOCKERFILE = ROOT / "Dockerfile"
EXAMPLES_DOCKERFILE = ROOT / "examples" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# The oldest Kubernetes minor still in wide use that has every API used here
# (autoscaling/v2, policy/v1), and the newest the package ships schemas for.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

BACKENDS = ("service1", "service2")


# ----------------------------------------------------------------- helpers


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']} objects; the checks below expect one of each"
        kinds[doc["kind"]] = doc
    return kinds


def _seconds(value: str | int | float) -> float:
    """Compose durations: 10, "10s", "1m30s", "1.5s", "500ms"."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert match, req
    return _dist_name(match.group(1))


def _installed(venv: Path) -> set[str]:
    """Distribution names installed in a venv (from its *.dist-info directories)."""
    return {
        _dist_name(p.name[: -len(".dist-info")].split("-")[0])
        for p in venv.glob("lib/python*/site-packages/*.dist-info")
    }


def _http(port: int, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------- Dockerfile model


@dataclass
class Instruction:
    cmd: str  # upper-case: FROM, COPY, RUN, ...
    flags: dict[str, str]  # leading --name=value options (--from, --mount, ...)
    args: str  # the rest, verbatim

    def exec_form(self) -> list[str] | None:
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction | None:
        found = self.all(cmd)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise AssertionError(f"{self.path.name}: no stage named {name!r}")

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def _expand(value: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Docker's line rules: `\\` continues a line, `#` lines are comments (inside continuations too)."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((buf + stripped).strip())
        buf = ""
    assert not buf, f"{path.name}: ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            key, _, value = token[2:].partition("=")
            flags[key] = value
            rest = rest.strip()
        if cmd == "ARG" and not stages:
            key, _, value = rest.partition("=")
            global_args[key] = value
            continue
        if cmd == "FROM":
            words = _expand(rest, global_args).split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            assert len(words) in (1, 3), f"{path.name}: FROM {rest}"
            stages.append(Stage(base=words[0], name=name))
            continue
        assert stages, f"{path.name}: {cmd} before the first FROM"
        stages[-1].instructions.append(Instruction(cmd, flags, rest))
    return Dockerfile(path, stages)


def _env_pairs(args: str) -> list[tuple[str, str]]:
    pairs = []
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        assert sep, f"use ENV key=value: {args}"
        pairs.append((key, value))
    return pairs


def _healthcheck_argv(instruction: Instruction) -> list[str]:
    assert instruction.args.startswith("CMD "), instruction.args
    cmd = Instruction("CMD", {}, instruction.args[4:].strip())
    return cmd.exec_form() or ["/bin/sh", "-c", cmd.args]


def _compose_healthcheck_argv(test: str | list[str]) -> list[str]:
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    if test[0] == "CMD":
        return list(test[1:])
    assert test[0] == "CMD-SHELL", test
    return ["/bin/sh", "-c", test[1]]


# ----------------------------------------------------------- .dockerignore


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per line, with Docker's syntax: `*`, `?`, `**`, `!`, leading `/` ignored."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                regex += ".*"
                i += 2
            elif pat[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pat[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pat[i])
                i += 1
        patterns.append((negated, re.compile(regex + r"\Z")))
    return patterns


def _ignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A pattern excludes a path when it matches the path or one of its parent directories."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            ignored = not negated
    return ignored


def build_context(dest: Path) -> list[str]:
    """Copy the build context (the repository minus .dockerignore) to ``dest``; return its files."""
    patterns = _dockerignore_patterns()
    may_reinclude = any(neg for neg, _ in patterns)
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        if not may_reinclude:
            dirnames[:] = [d for d in dirnames if not _ignored(rel_dir + d, patterns)]
        for name in filenames:
            rel = rel_dir + name
            if not _ignored(rel, patterns):
                files.append(rel)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel, follow_symlinks=False)
    return sorted(files)


# ---------------------------------------------------------- build emulator


@dataclass
class Built:
    """The final stage of an emulated build: its filesystem root, environment, workdir, command."""

    root: Path
    env: dict[str, str]
    workdir: str
    cmd: list[str]
    healthcheck: list[str] | None
    uv_syncs: list[tuple[str, set[str]]]  # (RUN command, packages in the venv after it)
    skipped: list[str]  # instructions the emulator could not run (reported, not silently dropped)

    def host_path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def host_env(self, **overrides: str) -> dict[str, str]:
        return _host_env(self.env, self.root) | overrides


def _map_value(value: str, root: Path) -> str:
    """An absolute path that is not on this host lives in the image: map it under ``root``."""
    if value.startswith("/") and ((root / value.lstrip("/")).exists() or not Path(value).exists()):
        return str(root / value.lstrip("/"))
    return value


def _host_env(image_env: dict[str, str], root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    for key, value in image_env.items():
        if key == "PATH":
            env[key] = ":".join(_map_value(p, root) for p in value.split(":"))
        else:
            env[key] = _map_value(value, root)
    return env


def emulate_build(dockerfile: Dockerfile, context: Path, work: Path, python: str) -> Built:
    """Replay ``dockerfile`` on ``work/root``; stages hand files over only through COPY --from."""
    root = work / "root"
    stashes: dict[str, Path] = {}
    uv_syncs: list[tuple[str, set[str]]] = []
    skipped: list[str] = []
    # What the base image provides: PATH (for `${PATH}`); python from the host.
    base_env = {"PATH": os.environ["PATH"]}
    env: dict[str, str] = {}
    workdir = "/"
    cmd: list[str] = []
    healthcheck: list[str] | None = None
    previous = ""
    for index, stage in enumerate(dockerfile.stages):
        if not stage.instructions:
            continue  # `FROM image AS name` only: an external image (the uv binary), not emulated
        if root.exists():  # a new FROM: the previous stage's filesystem is set aside
            stashes[previous] = root.rename(work / f"stage-{index}")
        previous = stage.name or str(index)
        root.mkdir()
        env, workdir, cmd, healthcheck = {}, "/", [], None
        for ins in stage.instructions:
            if ins.cmd == "WORKDIR":
                workdir = os.path.normpath(os.path.join(workdir, _expand(ins.args, env)))
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif ins.cmd == "ENV":
                for key, value in _env_pairs(ins.args):
                    env[key] = _expand(value, base_env | env)
            elif ins.cmd == "COPY":
                *sources, dest = ins.exec_form() or shlex.split(ins.args)
                dest_abs = os.path.normpath(os.path.join(workdir, dest))
                source_stage = ins.flags.get("from")
                if source_stage is not None and source_stage not in stashes:
                    skipped.append(f"COPY --from={source_stage} {ins.args} (external image)")
                    continue
                if source_stage is not None:
                    src_root = stashes[source_stage]
                    paths = [src_root / s.lstrip("/") for s in sources]
                    for s in sources:
                        assert os.path.normpath(s) == dest_abs, (
                            f"{dockerfile.path.name}: COPY --from must keep the path ({s} -> {dest_abs}): "
                            "a venv is not relocatable"
                        )
                else:
                    paths = [Path(p) for s in sources for p in sorted(glob.glob(str(context / s)))]
                    assert paths, f"{dockerfile.path.name}: COPY {ins.args}: not in the build context (.dockerignore?)"
                into_dir = dest.endswith("/") or len(paths) > 1
                target = root / dest_abs.lstrip("/")
                for p in paths:
                    if p.is_dir():
                        shutil.copytree(p, target, symlinks=True, dirs_exist_ok=True)
                    else:
                        t = target / p.name if into_dir else target
                        t.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(p, t, follow_symlinks=False)
            elif ins.cmd == "RUN":
                command = ins.exec_form()
                text = shlex.join(command) if command else ins.args
                if "uv sync" not in text:
                    skipped.append(f"RUN {text}")
                    continue
                run_env = _host_env(env, root) | {"UV_PYTHON": python}
                proc = subprocess.run(
                    command or ["/bin/sh", "-c", ins.args],
                    cwd=root / workdir.lstrip("/"),
                    env=run_env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert proc.returncode == 0, f"{dockerfile.path.name}: RUN {text} failed:\n{proc.stderr}"
                venv = Path(run_env["UV_PROJECT_ENVIRONMENT"])
                uv_syncs.append((text, _installed(venv)))
            elif ins.cmd == "CMD":
                cmd = ins.exec_form() or ["/bin/sh", "-c", ins.args]
            elif ins.cmd == "HEALTHCHECK":
                healthcheck = _healthcheck_argv(ins)
            elif ins.cmd in ("USER", "EXPOSE", "STOPSIGNAL", "LABEL", "ARG"):
                pass  # checked statically below
            else:
                skipped.append(f"{ins.cmd} {ins.args}")
    return Built(root, env, workdir, cmd, healthcheck, uv_syncs, skipped)


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
    return yaml.safe_load(COMPOSE.read_text())


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
    assert final.last("EXPOSE").args.split()[0].split("/")[0] == "8080"  # type: ignore[union-attr]
    assert final.last("CMD").exec_form() in (["gateway"], ["python", "-m", "gateway"])  # type: ignore[union-attr]
    assert "/health" in final.last("HEALTHCHECK").args  # type: ignore[union-attr]
    # Configuration only through the environment: no backend baked into the image.
    for stage in df.stages:
        for key, _ in _env_pairs(" ".join(i.args for i in stage.all("ENV"))):
            assert key != "GATEWAY_SERVICES" and not key.endswith("_URL") and key != "GATEWAY_CONFIG", key


def test_examples_dockerfile_specifics() -> None:
    df = parse_dockerfile(EXAMPLES_DOCKERFILE)
    syncs = [i.args for i in df.stage("builder").all("RUN") if "uv sync" in i.args]
    assert any("--group examples" in s for s in syncs), syncs
    final = df.final
    assert final.last("EXPOSE").args.split()[0] == "8000"  # type: ignore[union-attr]
    cmd = final.last("CMD").exec_form()  # type: ignore[union-attr]
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


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _start(name: str, argv: list[str], cwd: Path, env: dict[str, str], logs: Path) -> Proc:
    resolved = shutil.which(argv[0], path=env["PATH"])
    assert resolved, f"{name}: {argv[0]} not found on the image's PATH"
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen([resolved, *argv[1:]], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(name, popen, log)


def _check(argv: list[str], env: dict[str, str], cwd: Path) -> int:
    """Run a health check command as the container would (its PATH); return its exit code."""
    resolved = shutil.which(argv[0], path=env["PATH"])
    assert resolved, f"{argv[0]} not found on the image's PATH"
    return subprocess.run([resolved, *argv[1:]], env=env, cwd=cwd, capture_output=True, timeout=10).returncode


def _wait_healthy(proc: Proc, argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()}"
        if _check(argv, env, cwd) == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} not healthy within {timeout}s:\n{proc.output()}")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.popen.poll() is None:
            p.popen.kill()
        p.popen.wait(10)


def _with_port(argv: list[str], port: int) -> list[str]:
    """A compose command/health check with the container port 8000 moved to a free loopback port."""
    out = [arg.replace(":8000/", f":{port}/") for arg in argv]
    for flag, value in (("--port", str(port)), ("--host", "127.0.0.1")):
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


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
    gw_env |= {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_DRAIN_DELAY": "1"}
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
    deadline = time.monotonic() + 1.0
    while _check(image_check, env, cwd) == 0:
        assert time.monotonic() < deadline, "health check still passing while draining"
        time.sleep(0.05)
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


# ----------------------------------------------------------------- compose


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict[str, Any]) -> set[tuple[str, str]]:
    out = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.add((str(port.get("published")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            out.add((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return out


def test_compose_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
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


# -------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> dict[str, dict[str, Any]]:
    docs = [doc for res in kustomization["resources"] for doc in _yaml_docs(K8S_DIR / res)]
    return _by_kind(docs)


def test_kustomization_lists_every_manifest(kustomization: dict[str, Any]) -> None:
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S_DIR.iterdir() if p.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert len(set(kustomization["resources"])) == len(kustomization["resources"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_kubernetes_schemas(version: str, kustomization: dict[str, Any]) -> None:
    for res in kustomization["resources"]:
        for doc in _yaml_docs(K8S_DIR / res):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{res}: {doc['kind']} invalid for Kubernetes {version}: {exc.message}")


def test_kustomize_build_if_available(manifests: dict[str, dict[str, Any]]) -> None:
    """`kubectl kustomize` (what `kubectl apply -k` runs) renders the directory; needs no cluster."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: kustomize rendering not checked (schemas are, above)")
    proc = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = _by_kind([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert set(rendered) == set(manifests)
    for doc in rendered.values():
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gateway"


def _container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _gateway_env(manifests: dict[str, dict[str, Any]]) -> dict[str, str]:
    container = _container(manifests)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert manifests["ConfigMap"]["metadata"]["name"] == name, f"envFrom names a missing ConfigMap {name}"
        env |= manifests["ConfigMap"]["data"]
    for item in container.get("env", []):
        env[item["name"]] = item["value"]
    return env


def test_deployment_runs_the_gateway_safely(
    manifests: dict[str, dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = _container(manifests)
    assert container["image"] in {img["name"] for img in kustomization.get("images", [])}
    http_port = next(p for p in container["ports"] if p["name"] == "http")

    env = _gateway_env(manifests)
    config = from_env(env)  # the gateway accepts the pod's configuration
    assert config.port == http_port["containerPort"] == 8080
    assert "GATEWAY_WORKERS" in env and config.workers >= 1
    assert [r.name for r in config.routes][: len(BACKENDS)] == list(BACKENDS)

    # Readiness on /health (503 while draining); liveness on an endpoint that stays 200 while draining.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 8080), probe
    # Termination: a preStop sleep (if any) + the drain + in-flight grace fit in the grace period.
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pre_stop_s = pre_stop.get("sleep", {}).get("seconds", 0)
    drain = pre_stop_s + config.drain_delay_s + config.shutdown_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= drain, (pod["terminationGracePeriodSeconds"], drain)
    # Liveness must not kill a pod while it drains (503, then refused until exit).
    live = container["livenessProbe"]
    assert live.get("periodSeconds", 10) * live.get("failureThreshold", 3) > drain

    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], kind
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security.get("capabilities", {}).get("add")
    pod_security = pod.get("securityContext", {})
    assert (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")) is True
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    assert uid is not None and uid != 0, "numeric non-root UID (runAsNonRoot cannot check a named USER)"
    image_user = parse_dockerfile(GATEWAY_DOCKERFILE).final.last("USER")
    assert image_user is not None and uid == int(image_user.args.split(":")[0]), "the pod runs as the image's user"


LIVENESS_PATH = "/api/gateway/status"


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_workers_match_the_cpu_and_the_hpa_target_fits(manifests: dict[str, dict[str, Any]]) -> None:
    """Issue 11: one answer for sizing. A fixed GATEWAY_WORKERS equals the CPU limit, with requests =
    limits (Guaranteed CPU), or `auto` with a CPU limit it can count. The HPA's CPU target (relative to
    the request) is reachable by those workers and leaves headroom."""
    container = _container(manifests)
    env = _gateway_env(manifests)
    cpu_request = _cpus(str(container["resources"]["requests"]["cpu"]))
    cpu_limit = _cpus(str(container["resources"]["limits"]["cpu"]))
    if env["GATEWAY_WORKERS"] == "auto":
        assert cpu_limit >= 1
    else:
        assert int(env["GATEWAY_WORKERS"]) == cpu_limit == cpu_request, (env["GATEWAY_WORKERS"], cpu_request, cpu_limit)
    hpa = manifests["HorizontalPodAutoscaler"]
    cpu_targets = [m["resource"]["target"] for m in hpa["spec"]["metrics"]
                   if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu_targets and all(t["type"] == "Utilization" for t in cpu_targets)
    for target in cpu_targets:
        # utilization is relative to the request; the workers can use at most the limit
        assert 50 <= target["averageUtilization"] <= 90
        assert target["averageUtilization"] / 100 * cpu_request < cpu_limit


def test_trusted_proxies_cover_the_pod_network_and_prometheus_is_pointed_at_the_metrics(
    manifests: dict[str, dict[str, Any]]
) -> None:
    """Issue 11: GATEWAY_TRUSTED_PROXIES covers the usual pod networks (an in-cluster ingress), and the
    pod template tells Prometheus where to scrape: path /api/gateway/metrics on the container port."""
    import ipaddress

    env = _gateway_env(manifests)
    assert "GATEWAY_TRUSTED_PROXIES" in env
    config = from_env(env)
    for pod_ip in ("10.244.1.7", "10.42.0.9", "192.168.3.4", "172.17.0.3"):  # flannel, k3s, Calico, docker
        assert any(ipaddress.ip_address(pod_ip) in net for net in config.trusted_proxies), pod_ip
    text = (K8S_DIR / "deployment.yaml").read_text()
    assert "pod network" in text and "GATEWAY_ADMIN_ALLOW" in text, "the comments say why"
    admin_allow = getattr(config, "admin_allow", None)  # GATEWAY_ADMIN_ALLOW (issue 10), when present
    if admin_allow is not None:
        assert any(ipaddress.ip_address("10.244.1.7") in net for net in admin_allow)

    annotations = manifests["Deployment"]["spec"]["template"]["metadata"].get("annotations", {})
    container = _container(manifests)
    ports = {str(p["containerPort"]) for p in container["ports"]}
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/path") == "/api/gateway/metrics"
    assert annotations.get("prometheus.io/port") in ports


def test_probe_paths_answer_as_the_probes_expect_while_draining(manifests: dict[str, dict[str, Any]]) -> None:
    """The liveness path stays 200 while the gateway drains (a draining pod is not killed); the readiness
    path turns 503 (the pod leaves the Service)."""
    from tests.conftest import start_gateway
    from tests.integration.helpers import request

    container = _container(manifests)
    live, ready = container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]
    gw, stop = start_gateway({"GATEWAY_SERVICES": "service1"})
    try:
        assert request(gw.port, "GET", live)[0] == 200 and request(gw.port, "GET", ready)[0] == 200

        def drain() -> None:
            gw.server.gw.state = "draining"

        gw.call(drain)
        assert request(gw.port, "GET", live)[0] == 200
        assert request(gw.port, "GET", ready)[0] == 503
    finally:
        stop()


def test_deploy_docs_agree_with_the_deployment(manifests: dict[str, dict[str, Any]]) -> None:
    """docs/deploy.md's Kubernetes section states the pod's workers, CPU and probes as deployment.yaml has them."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    env = _gateway_env(manifests)
    container = _container(manifests)
    assert f"`GATEWAY_WORKERS` ({env['GATEWAY_WORKERS']} in `deployment.yaml`)" in text
    assert f"`{container['livenessProbe']['httpGet']['path']}`" in text.split("**Probes.**", 1)[1].split("\n- ", 1)[0]
    cpu = container["resources"]["limits"]["cpu"]
    resources = text.split("**Resources.**", 1)[1].split("\n- ", 1)[0]
    assert f"{cpu} CPU" in resources, resources


def test_service_hpa_pdb_target_the_deployment(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = _container(manifests)
    port_names = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}

    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])

    hpa = manifests["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":  # utilization is relative to the request
            assert metric["resource"]["name"] in container["resources"]["requests"]

    pdb = manifests["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A node drain can always proceed: the budget allows at least one pod down.
    if "minAvailable" in pdb["spec"]:
        assert int(pdb["spec"]["minAvailable"]) < hpa["spec"]["minReplicas"]
    else:
        assert int(pdb["spec"]["maxUnavailable"]) >= 1


def test_configmap_and_compose_name_the_same_backends(
    manifests: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    data = manifests["ConfigMap"]["data"]
    compose_env = _compose_env(compose["services"]["gateway"])
    assert data["GATEWAY_SERVICES"] == compose_env["GATEWAY_SERVICES"]
    for name in data["GATEWAY_SERVICES"].split(","):
        key = name.upper().replace("-", "_") + "_URL"
        assert data[key] == compose_env[key]


def test_deploy_readme_documents_both() -> None:
    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "deploy.md").read_text()
    needles = ("docker compose up", "kubectl apply -k deploy/kubernetes", "GATEWAY_WORKERS", "HorizontalPodAutoscaler")
    for needle in needles:
        assert needle in text, needle
    assert "could not be run" in text, "the plain note about what was not run on the machine that wrote this"
