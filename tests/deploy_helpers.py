"""Shared by the deploy tests (tests/test_deploy_docker.py, tests/test_deploy_kubernetes.py,
tests/test_compose.py): the repository's deploy files, a Dockerfile parser, the
.dockerignore filter, the build emulator that replays a Dockerfile's ``uv sync``
steps, and small helpers to run what it built.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.integration.helpers import wait_for

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


# ------------------------------------------------ running what was built


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
    def healthy() -> bool:
        assert proc.popen.poll() is None, f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()}"
        return _check(argv, env, cwd) == 0

    assert wait_for(healthy, timeout), f"{proc.name} not healthy within {timeout}s:\n{proc.output()}"


def _with_port(argv: list[str], port: int) -> list[str]:
    """A compose command/health check with the container port 8000 moved to a free loopback port."""
    out = [arg.replace(":8000/", f":{port}/") for arg in argv]
    for flag, value in (("--port", str(port)), ("--host", "127.0.0.1")):
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


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


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


# -------------------------------------------------------------- Kubernetes


def load_kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


def load_manifests(kustomization: dict[str, Any]) -> dict[str, dict[str, Any]]:
    docs = [doc for res in kustomization["resources"] for doc in _yaml_docs(K8S_DIR / res)]
    return _by_kind(docs)


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


LIVENESS_PATH = "/api/gateway/status"


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
