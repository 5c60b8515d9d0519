"""The gateway's own error responses: one exception tree, one JSON shape.

Every response the gateway makes itself is
``{"error": code, "message": text, "status": int, "request_id": id}``.
Exceptions carry ``status`` and ``code`` the way h11's ``RemoteProtocolError``
carries ``error_status_hint``; the classes below are the Errors table of
docs/forwarding.md. No asyncio here.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    code: str = "internal_error"
    default_message: str = "internal gateway error"
    headers: tuple[tuple[bytes, bytes], ...] = ()  # extra response headers

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message


class BadRequest(GatewayError):
    status, code, default_message = 400, "bad_request", "malformed request"


class Forbidden(GatewayError):
    status, code, default_message = 403, "forbidden", "this endpoint is not available to your address"


class NotFound(GatewayError):
    status, code, default_message = 404, "not_found", "no route for this path"


class MethodNotAllowed(GatewayError):
    status, code, default_message = 405, "method_not_allowed", "method not allowed"
    headers = ((b"Allow", b"GET, HEAD"),)  # RFC 9110 15.5.6: a 405 MUST list them


class RequestTimeout(GatewayError):
    status, code, default_message = 408, "request_timeout", "request head not received in time"


class PayloadTooLarge(GatewayError):
    status, code, default_message = 413, "payload_too_large", "request body too large"


class HeaderTooLarge(GatewayError):
    status = 431
    code = "request_header_fields_too_large"
    default_message = "request head too large"


class VersionNotSupported(GatewayError):
    status, code, default_message = 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served"


class BadGateway(GatewayError):
    status, code, default_message = 502, "bad_gateway", "upstream error"


class ServiceUnavailable(GatewayError):
    status, code, default_message = 503, "service_unavailable", "service unavailable"


class GatewayTimeout(GatewayError):
    status, code, default_message = 504, "gateway_timeout", "upstream timed out"


# Upstream failures, kept apart the way httpcore keeps ConnectTimeout,
# ReadTimeout and PoolTimeout apart, so logs and retries can tell them apart.
class ConnectFailed(BadGateway):
    """Refused, unreachable or unresolvable: nothing was sent."""


class UpstreamClosed(BadGateway):
    """The backend closed or reset the connection before a complete response."""

    default_message = "upstream closed the connection"


class UpstreamProtocolError(BadGateway):
    default_message = "invalid response from upstream"


class ConnectTimeout(GatewayTimeout):
    default_message = "timed out connecting to upstream"


class ReadTimeout(GatewayTimeout):
    default_message = "timed out waiting for upstream"


class PoolTimeout(ServiceUnavailable):
    default_message = "no upstream connection available in time"


class ClientGone(Exception):
    """The client closed its connection; nothing more can be sent to it."""


def error_body(status: int, code: str, message: str, request_id: str, **extra: object) -> bytes:
    return orjson.dumps(
        {"error": code, "message": message, "status": status, "request_id": request_id, **extra}
    )
