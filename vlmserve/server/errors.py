"""Every failure leaves the server as an OpenAI-shaped body, `{"error": {"message", "type", "param", "code"}}`.

`code` is the HTTP status as an integer, as vLLM's server sends it. This is the one place exceptions become
responses; handlers raise `APIError` (or let a `ValueError` from the engine, chat format or images through).
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vlmserve.engine.async_engine import EngineDeadError
from vlmserve.server.image_fetch import ImageFetchError
from vlmserve.server.protocol import ChatCompletionRequest, CompletionRequest

logger = logging.getLogger("vlmserve.server")

_REQUEST_FIELDS = frozenset(ChatCompletionRequest.model_fields) | frozenset(CompletionRequest.model_fields)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready (logged as 499, nginx's code)."""


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def as_api_error(error: Exception) -> APIError:
    """What a client is told about `error`: its own mistakes in full, our failures without internals."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ClientDisconnected):
        return APIError(499, "the client closed the request")
    if isinstance(error, ImageFetchError):
        return APIError(error.status, str(error), "messages")
    if isinstance(error, EngineDeadError):
        return APIError(503, "the engine is not running; the server is shutting down or failed")
    if isinstance(error, ValueError):
        return APIError(400, str(error), _param_named_in(str(error)))
    logger.exception("internal error", exc_info=error)
    return APIError(500, "internal server error; the server log has the details")


def _param_named_in(message: str) -> str | None:
    """SamplingParams and the engine start their messages with the offending field's name (maybe dotted)."""
    first = message.split(" ", 1)[0]
    return first if first.split(".")[0] in _REQUEST_FIELDS else None


def _validation_param(error: dict) -> str | None:
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    return ".".join(location) or None


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = _validation_param(first)
    if first.get("type") == "json_invalid":
        return error_response(400, f"the request body is not valid JSON: {first.get('msg')}")
    if first.get("type") == "extra_forbidden":
        return error_response(400, f"unknown field {param!r}: this server does not support it", param)
    message = first.get("msg", "invalid request")
    return error_response(400, f"{param}: {message}" if param else message, param)


async def _on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    error = as_api_error(exc)
    return error_response(error.status, error.message, error.param, error.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(APIError, _on_error)
    app.add_exception_handler(ValueError, _on_error)
    app.add_exception_handler(Exception, _on_error)
