"""ASGI middleware: count every response by endpoint and status; refuse oversized bodies before reading them.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would stand between streams and disconnects.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.server.errors import error_response
from vlmserve.server.metrics import Metrics

UNMATCHED = "unmatched"  # unknown paths share one label, so scanners cannot grow the metric without bound


class CountRequests:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", UNMATCHED)
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()


class LimitBodySize:
    """413 for a declared Content-Length over the limit, before the body is read (a chunked body without one
    is only bounded by the per-image checks)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the request body is larger than this server takes ({self.max_bytes} "
                                       "bytes; see --max-images-per-request and --max-image-bytes)")
        await response(scope, receive, send)
