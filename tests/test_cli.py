"""The command line (README.md, Quick start; docs/operations.md): ``gateway --version`` prints the
version; ``gateway --help`` and ``gateway check --help`` print usage; all exit 0
and probe nothing. An unknown flag, command or extra argument prints usage to
stderr and exits 2, as argparse-based tools do. Each runs the real entry point
(``python -m gateway``) in a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gateway import __version__


@pytest.fixture
def backend_socket() -> Iterator[socket.socket]:
    """A listening loopback socket standing in for a backend: a probe would connect to it."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.setblocking(False)
        yield sock


def run(*args: str, sock: socket.socket | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and not k.endswith("_URL")}
    env["GATEWAY_PORT"] = "0"
    if sock is not None:
        env["SERVICE1_URL"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, check=False)


def probed(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_version_prints_the_version():
    done = run("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"gateway {__version__}\n", "")
    assert run("-V").stdout == done.stdout


@pytest.mark.parametrize("args", [["--help"], ["-h"]])
def test_help_prints_usage_and_probes_nothing(args, backend_socket):
    done = run(*args, sock=backend_socket)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: gateway") and "check" in done.stdout and "--version" in done.stdout
    assert not probed(backend_socket)


@pytest.mark.parametrize("args", [["check", "--help"], ["check", "-h"]])
def test_check_help_prints_usage_and_probes_nothing(args, backend_socket):
    """`gateway check --help` used to run the probes."""
    done = run(*args, sock=backend_socket)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: gateway check") and "probe" in done.stdout
    assert not probed(backend_socket)


def test_help_ignores_a_bad_configuration():
    """Help needs no configuration: a bad value does not turn it into an error."""
    done = subprocess.run([sys.executable, "-m", "gateway", "check", "--help"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "GATEWAY_PORT": "nope"}, check=False)
    assert done.returncode == 0 and done.stdout.startswith("usage: gateway check")


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["check", "--bogus"], "unrecognized arguments: --bogus"),
        (["check", "extra"], "unrecognized arguments: extra"),
        (["check", "check"], "unrecognized arguments: check"),
        (["serve"], "invalid choice: 'serve'"),
    ],
)
def test_unknown_flags_and_extra_arguments_are_usage_errors(args, complaint, backend_socket):
    """An unknown flag prints usage on stderr and exits 2; extra arguments are not silently ignored."""
    done = run(*args, sock=backend_socket)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: gateway") and complaint in done.stderr, done.stderr
    assert not probed(backend_socket)
