"""Issue 10's two load scenarios, before/after figures (bounded: about 30 s in all).

    uv run python -m benchmarks.hostile [--gateway-path DIR]

Starts a real gateway process (``python -m gateway``; ``--gateway-path`` puts
another checkout's ``gateway`` package first on its PYTHONPATH, for the
"before" figure) with the contract's defaults and GATEWAY_UPSTREAM_TIMEOUT=5,
in front of threaded loopback backends, and reports:

1. slow uploaders: 130 clients send a head with ``Content-Length: 100000``,
   then 16 body bytes every 2 s; meanwhile 70 ordinary GETs from other
   clients (10 a second): how many took over 2 s, and the slowest.
2. random closes: a backend that closes idle keep-alive connections at
   random (after 1-3 answers: at once, after a pause, or on the next request
   unanswered); 1000 PUTs with small bodies from 10 clients: how many failed,
   and how many reached the backend's handler twice.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from tests.backends import RawServer, fast_backend, flaky_keepalive_handler
from tests.integration.helpers import request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(upstream: str, gateway_path: str | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_SERVICES": "service1",
           "SERVICE1_URL": upstream, "GATEWAY_UPSTREAM_TIMEOUT": "5", "GATEWAY_ACCESS_LOG": "off"}
    if gateway_path:
        env["PYTHONPATH"] = gateway_path + os.pathsep + env.get("PYTHONPATH", "")
    # -m puts the working directory first on sys.path: run from the chosen checkout.
    proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, stdout=subprocess.DEVNULL,
                            cwd=gateway_path or None)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/health", timeout=1)[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("gateway did not start")


def slow_uploaders(gateway_path: str | None) -> dict[str, Any]:
    server = fast_backend().start()
    proc, port = start_gateway(server.url, gateway_path)
    stop = threading.Event()
    socks: list[socket.socket] = []
    try:
        for _ in range(130):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"PUT /api/service1/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n")
            socks.append(s)

        def dribble() -> None:
            while not stop.wait(2.0):
                for s in socks:
                    try:
                        s.sendall(b"x" * 16)
                    except OSError:
                        pass

        feeder = threading.Thread(target=dribble)
        feeder.start()
        time.sleep(1.0)
        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def get() -> None:
            t0 = time.monotonic()
            try:
                status = request(port, "GET", "/api/service1/bytes/100", timeout=15)[0]
            except OSError:
                status = 0
            with lock:
                results.append((status, time.monotonic() - t0))

        threads = []
        for _ in range(70):
            t = threading.Thread(target=get)
            t.start()
            threads.append(t)
            time.sleep(0.1)
        for t in threads:
            t.join(20)
        stop.set()
        feeder.join(5)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(10)
        server.stop()
    times = sorted(t for _, t in results)
    return {
        "gets": len(results),
        "non_200": sum(1 for status, _ in results if status != 200),
        "over_2s": sum(1 for t in times if t > 2.0),
        "p50_ms": round(times[len(times) // 2] * 1000, 1),
        "max_ms": round(times[-1] * 1000, 1),
    }


def random_closes(gateway_path: str | None) -> dict[str, Any]:
    processed: collections.Counter[bytes] = collections.Counter()
    server = RawServer(flaky_keepalive_handler(10, processed)).start()
    proc, port = start_gateway(server.url, gateway_path)
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    try:
        def client(k: int) -> None:
            for j in range(100):
                try:
                    status = request(port, "PUT", f"/api/service1/doc/{k}/{j}", body=b'{"v": %d}' % j)[0]
                except OSError:
                    status = 0
                with lock:
                    statuses[status] += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        proc.terminate()
        proc.wait(10)
        server.stop()
    return {
        "puts": sum(statuses.values()),
        "errors": sum(n for status, n in statuses.items() if status != 200),
        "statuses": dict(statuses),
        "processed_twice": sum(1 for n in processed.values() if n > 1),
        "backend_connections": server.connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway-path", help="directory holding the gateway package to run (default: this one)")
    args = parser.parse_args()
    print("slow uploaders + GETs:", slow_uploaders(args.gateway_path), flush=True)
    print("random closes + 1000 PUTs:", random_closes(args.gateway_path), flush=True)


if __name__ == "__main__":
    main()
