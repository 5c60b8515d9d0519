"""The h11 floor: CPU time h11 itself needs per proxied request, no sockets.

A proxy built on h11 does, for every small GET, at least this much h11 work:

- server side (the client's connection): ``receive_data`` of the request
  bytes, ``next_event`` -> ``Request``, -> ``EndOfMessage``, -> ``NEED_DATA``;
  ``send`` of a ``Response``, its ``Data`` and ``EndOfMessage``;
  ``start_next_cycle``;
- client side (the upstream connection): ``send`` of the forwarded
  ``Request`` and ``EndOfMessage``; ``receive_data`` of the backend's
  response bytes, ``next_event`` -> ``Response``, -> ``Data``,
  -> ``EndOfMessage``, -> ``NEED_DATA``; ``start_next_cycle``.

The messages are the ones of the benchmark's small GET: what wrk sends, what
the gateway forwards (its ``X-Forwarded-*`` and ``X-Request-ID`` headers),
what the benchmark backend answers, and that answer with ``X-Request-ID``
for the client. Event objects are built inside the timed loop (h11
validates headers there: that is h11's cost too). The figure is CPU time
(``time.process_time``), the minimum over several repeats: a floor no
h11-based proxy goes below, whatever the rest of its code does.

    python benchmarks/h11_floor.py [--json] [--iterations N] [--repeats R]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import statistics
import sys
import time

import h11

# What wrk sends for the small GET through a proxy.
CLIENT_REQUEST = b"GET /api/service1/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# What the benchmark backend answers (benchmarks/backend.py SMALL_RESPONSE).
BODY = b'{"ok":true,"message":"hello from the benchmark backend"}'
BACKEND_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
REQUEST_ID = b"0123456789abcdef0123456789abcdef"
UPSTREAM_HEADERS = [
    (b"Host", b"127.0.0.1:8080"),
    (b"X-Forwarded-For", b"127.0.0.1"),
    (b"X-Forwarded-Proto", b"http"),
    (b"X-Forwarded-Host", b"127.0.0.1:8080"),
    (b"X-Forwarded-Prefix", b"/api/service1"),
    (b"X-Request-ID", REQUEST_ID),
]
RESPONSE_HEADERS = [
    (b"Content-Type", b"application/json"),
    (b"Content-Length", str(len(BODY)).encode()),
    (b"X-Request-ID", REQUEST_ID),
]


def server_side(n: int) -> float:
    """Seconds of CPU for n request/response cycles on an h11 SERVER connection."""
    conn = h11.Connection(h11.SERVER)
    request_bytes = CLIENT_REQUEST
    t0 = time.process_time()
    for _ in range(n):
        conn.receive_data(request_bytes)
        request = conn.next_event()
        end = conn.next_event()
        need = conn.next_event()
        out = conn.send(h11.Response(status_code=200, headers=RESPONSE_HEADERS, reason=b"OK"))
        out += conn.send(h11.Data(data=BODY))
        out += conn.send(h11.EndOfMessage())
        conn.start_next_cycle()
    elapsed = time.process_time() - t0
    assert type(request) is h11.Request and type(end) is h11.EndOfMessage and need is h11.NEED_DATA
    assert out.endswith(BODY)
    return elapsed


def client_side(n: int) -> float:
    """Seconds of CPU for n request/response cycles on an h11 CLIENT connection."""
    conn = h11.Connection(h11.CLIENT)
    response_bytes = BACKEND_RESPONSE
    t0 = time.process_time()
    for _ in range(n):
        out = conn.send(h11.Request(method=b"GET", target=b"/api/small", headers=UPSTREAM_HEADERS))
        out += conn.send(h11.EndOfMessage())
        conn.receive_data(response_bytes)
        response = conn.next_event()
        data = conn.next_event()
        end = conn.next_event()
        need = conn.next_event()
        conn.start_next_cycle()
    elapsed = time.process_time() - t0
    assert type(response) is h11.Response and type(data) is h11.Data and type(end) is h11.EndOfMessage
    assert need is h11.NEED_DATA and out.startswith(b"GET /api/small")
    return elapsed


def measure(iterations: int = 5000, repeats: int = 7) -> dict[str, object]:
    server_side(500)  # warm up
    client_side(500)
    servers, clients = [], []
    for _ in range(repeats):
        servers.append(server_side(iterations) / iterations * 1e6)
        clients.append(client_side(iterations) / iterations * 1e6)
    return {
        "h11_version": importlib.metadata.version("h11"),
        "python": sys.version.split()[0],
        "iterations": iterations,
        "repeats": repeats,
        "server_us": round(min(servers), 2),
        "client_us": round(min(clients), 2),
        "floor_us": round(min(servers) + min(clients), 2),
        "server_us_median": round(statistics.median(servers), 2),
        "client_us_median": round(statistics.median(clients), 2),
        "floor_us_median": round(statistics.median(servers) + statistics.median(clients), 2),
        "gc_enabled": gc.isenabled(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU time h11 needs per proxied request (no sockets).")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure(args.iterations, args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"h11 {result['h11_version']} floor per proxied request: {result['floor_us']} us "
            f"(server side {result['server_us']} us + client side {result['client_us']} us; "
            f"min of {args.repeats} x {args.iterations}; medians {result['floor_us_median']} us)"
        )


if __name__ == "__main__":
    main()
