"""ASGI middleware: count every response by endpoint and status; answer what escapes the routes with one logged
500; refuse oversized bodies, declared or streamed.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would stand between streams and disconnects.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.server.errors import as_api_error, error_response
from vlmserve.server.metrics import Metrics

UPLOAD_PATH = "/v1/files"
REQUEST_LIMITS = "--max-images-per-request, --max-image-bytes and --max-prompt-chars"
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


class AnswerErrors:
    """An exception no route handler answered becomes its OpenAI-shaped response here, logged once (by
    `as_api_error`, only when it is ours). Starlette's own last-resort handler would log it and re-raise it to
    the server, which logs it again and counts a 500 even for a client that had gone (499)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:  # noqa: BLE001 - this is the last place an error can become a response
            error = as_api_error(exc)
            if not started:
                await error_response(error.status, error.message, error.param, error.headers)(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int, limits: str):
        super().__init__(413, f"the request body is larger than this server takes ({max_bytes} bytes; see "
                              f"{limits})")


class LimitBodySize:
    """413 for a body over the limit: a declared Content-Length before anything is read, a chunked body as soon
    as what has arrived passes the limit (the route's body parsing gets the 413 and stops reading). File uploads
    (POST /v1/files) have a limit of their own, `upload_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int):
        self.app, self.max_bytes, self.upload_bytes = app, max_bytes, upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["path"] == UPLOAD_PATH
        max_bytes = self.upload_bytes if upload else self.max_bytes
        limits = "--max-batch-file-bytes" if upload else REQUEST_LIMITS
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > max_bytes:
            raise BodyTooLarge(max_bytes, limits)  # answered by AnswerErrors, outside this middleware
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes, limits)
            return message

        return await self.app(scope, receive_counted, send)
