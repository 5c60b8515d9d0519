"""``gateway`` / ``python -m gateway``: configuration from the environment, then serve.

A bad configuration value prints one line naming the variable and exits 2.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, from_env


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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: gateway   (configured by GATEWAY_* and <NAME>_URL environment variables; see README)")
        return 0
    try:
        config = from_env()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    raise_nofile_limit(config.max_connections + 1024)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        uvloop = None
    from gateway.server import serve

    try:
        if uvloop is not None:
            uvloop.run(serve(config))
        else:  # pragma: no cover
            asyncio.run(serve(config))
    except OSError as exc:
        print(f"gateway: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
