"""What is measured: direct access, the gateway and the peers; how each is started and stopped.

``TARGETS`` is the one list of targets (in table order); ``start_target`` starts one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
HOST = "127.0.0.1"

TARGETS = ("direct", "gateway", "gateway-log", "aiohttp", "fastapi", "nginx")
TARGET_LABELS = {
    "direct": "direct",
    "gateway": "gateway",
    "gateway-log": "gateway, access log on",
    "aiohttp": "aiohttp proxy",
    "fastapi": "FastAPI+httpx",
    "nginx": "nginx",
}

TARGET_COLORS = {  # in the chart
    "direct": "#7f7f7f", "gateway": "#d62728", "gateway-log": "#ff9896", "aiohttp": "#1f77b4",
    "fastapi": "#2ca02c", "nginx": "#9467bd",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | set[int] | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu} if isinstance(cpu, int) else cpu)


def http_status(port: int, path: str, host: str = HOST, timeout: float = 2.0) -> int | None:
    """One GET over a fresh connection; the status code, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else None
    except OSError:
        return None


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    prefix: str  # "/api/" (direct) or "/api/service1/"
    host: str = HOST

    def url(self, rest: str) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}{rest}"

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def wait_ready(self, path: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if http_status(self.port, path, self.host) == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer 200 on {path} within {timeout:g}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what we started
                self.proc.wait(5)


def spawn(name: str, cmd: list[str], *, cpu: int | set[int] | None, env: dict[str, str], logdir: Path, port: int,
          prefix: str) -> Server:
    log_path = logdir / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=pinned(cpu), start_new_session=True,
    )
    return Server(name, proc, port, log_path, prefix)


def start_target(name: str, *, cpu: int | set[int] | None, logdir: Path, upstream: tuple[str, int],
                 workers: int = 1) -> Server:
    port = free_port()
    up_host, up_port = upstream
    backend_url = f"http://{up_host}:{up_port}"
    py = sys.executable
    if name in ("gateway", "gateway-log"):
        env = {
            "GATEWAY_HOST": HOST,
            "GATEWAY_PORT": str(port),
            "GATEWAY_SERVICES": "service1",
            "SERVICE1_URL": backend_url,
            # on: one JSON line per request to stdout (a file)
            "GATEWAY_ACCESS_LOG": "off" if name == "gateway" else "on",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_WORKERS": str(workers),
        }
        return spawn(name, [py, "-m", "gateway"], cpu=cpu, env=env, logdir=logdir, port=port, prefix="/api/service1/")
    if name == "aiohttp":
        cmd = [py, str(BENCH / "peers" / "aiohttp_proxy.py"), "--port", str(port), "--backend", backend_url]
        return spawn(name, cmd, cpu=cpu, env={}, logdir=logdir, port=port, prefix="/api/service1/")
    if name == "fastapi":
        cmd = [py, str(BENCH / "peers" / "fastapi_httpx_proxy.py"), "--port", str(port), "--backend", backend_url]
        return spawn(name, cmd, cpu=cpu, env={}, logdir=logdir, port=port, prefix="/api/service1/")
    if name == "nginx":
        prefix_dir = logdir / "nginx"
        prefix_dir.mkdir(exist_ok=True)
        prefix_dir.chmod(0o755)
        logdir.chmod(0o755)  # nginx's worker may run as another user; it needs its temp dirs
        template = (BENCH / "peers" / "nginx.conf.template").read_text()
        user_line = "user root;" if os.geteuid() == 0 else ""
        conf = (
            template.replace("{prefix}", str(prefix_dir))
            .replace("{backend_hostport}", f"{up_host}:{up_port}")
            .replace("{port}", str(port))
            .replace("{user_line}", user_line)
        )
        conf_path = prefix_dir / "nginx.conf"
        conf_path.write_text(conf)
        cmd = [nginx_path() or "nginx", "-p", str(prefix_dir), "-c", str(conf_path),
               "-e", str(prefix_dir / "error.log")]
        return spawn(name, cmd, cpu=cpu, env={}, logdir=logdir, port=port, prefix="/api/service1/")
    raise ValueError(name)


def nginx_path() -> str | None:
    candidates = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
    return shutil.which("nginx") or next((p for p in candidates if os.path.exists(p)), None)



def available_targets(wanted: list[str]) -> tuple[list[str], list[str]]:
    ok, skipped = [], []
    needs = {"aiohttp": ["aiohttp"], "fastapi": ["fastapi", "httpx", "uvicorn"]}
    for t in wanted:
        if t == "nginx" and not nginx_path():
            skipped.append("nginx: not installed (apt-get install nginx-light)")
        elif any(importlib.util.find_spec(m) is None for m in needs.get(t, [])):
            skipped.append(f"{t}: missing {', '.join(needs[t])} (uv sync --group bench)")
        else:
            ok.append(t)
    return ok, skipped

