"""``gateway`` / ``python -m gateway``: configuration from the environment, then serve.

A bad configuration value prints one line naming the variable and exits 2, as
does a command line argparse rejects (usage on stderr); ``--help``, ``check
--help`` and ``--version`` print and exit 0 without reading the configuration.
``GATEWAY_WORKERS=N`` (or ``auto``) runs N worker processes under a supervisor.
"""

from __future__ import annotations

import argparse
import resource
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config import Config, ConfigError, authority, from_env


def raise_nofile_limit(wanted: int) -> int:
    """Raise the open-file soft limit toward the hard limit (one fd per connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def run_worker(config: Config, worker_id: int) -> int:
    """One worker: serve on uvloop until SIGTERM/SIGINT, drain, return the exit code."""
    import uvloop

    from gateway.server import serve

    try:
        uvloop.run(serve(config, worker_id=worker_id))
    except OSError as exc:
        where = authority(config.host, config.port)
        print(f"gateway: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line: ``gateway`` serves, ``gateway check`` probes; the rest is the environment."""
    p = argparse.ArgumentParser(
        prog="gateway",
        description="A fast, strict HTTP/1.1 API gateway. Without a command it serves.",
        epilog="Configured by environment variables only: GATEWAY_* and <NAME>_URL (README, Configuration).",
    )
    p.add_argument("-V", "--version", action="version", version=f"gateway {__version__}")
    commands = p.add_subparsers(dest="command", title="commands", metavar="{check}")
    commands.add_parser(
        "check",
        help="validate the configuration and probe every backend once",
        description="Validate the configuration, probe every backend once with a keep-alive request and print one "
        "line per backend. Exit 0: all is well; 1: a backend has a problem; 2: a configuration error.",
        epilog="Configured by the same environment variables as the gateway itself.",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # argparse's conventions: --help/--version print and exit 0; an unknown
        # flag, command or extra argument prints usage to stderr and exits 2.
        command = parser().parse_args(args).command
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        config = from_env()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if command == "check":
        import asyncio

        from gateway.check import check

        return asyncio.run(check(config))
    raise_nofile_limit(config.max_connections + 1024)
    if config.workers == 1:
        return run_worker(config, 0)
    if config.port == 0:
        print("gateway: configuration error: GATEWAY_PORT=0 needs GATEWAY_WORKERS=1", file=sys.stderr)
        return 2
    from gateway.accesslog import Logger
    from gateway.supervisor import run_workers

    return run_workers(config, run_worker, Logger(level=config.log_level))
