"""Every failure leaves the server as an OpenAI-shaped body, `{"error": {"message", "type", "param", "code"}}`.

`code` is the HTTP status as an integer, as vLLM's server sends it. This is the one place exceptions become
responses; handlers raise `APIError` (or let a `ValueError` from the engine, chat format or images through).
Anything else reaches `middleware.AnswerErrors`, which answers it through `as_api_error` too.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vlmserve.engine.async_engine import EngineDeadError, RequestFailedError
from vlmserve.server.image_fetch import ImageFetchError
from vlmserve.server.protocol import UNSUPPORTED, ChatCompletionRequest, CompletionRequest
from vlmserve.server.request_types import SURROGATE_MESSAGE

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
    if isinstance(error, RequestFailedError):  # the engine logged it
        return APIError(500, "the engine failed this request; the server log has the details")
    if isinstance(error, HTTPException):
        return APIError(error.status_code, str(error.detail), headers=getattr(error, "headers", None))
    if isinstance(error, ValueError):
        return APIError(400, str(error), _param_named_in(str(error)))
    logger.exception("internal error", exc_info=error)
    return APIError(500, "internal server error; the server log has the details")


def _param_named_in(message: str) -> str | None:
    """SamplingParams and the engine start their messages with the offending field's name (maybe dotted)."""
    first = message.split(" ", 1)[0]
    return first if first.split(".")[0] in _REQUEST_FIELDS else None


def _validation_param(error: dict, body) -> str | None:
    """The dotted path of the failing field in the client's own body. pydantic's location also names union
    members ("str", "list[int]") and discriminator tags ("user", "json_schema"), which the body does not have."""
    location = [part for part in error.get("loc", ()) if part != "body"]
    path, node = [], body
    for i, part in enumerate(location):
        missing = i == len(location) - 1 and error.get("type") == "missing"
        if isinstance(node, dict) and isinstance(part, str) and (part in node or missing):
            path.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(str(part))
            node = node[part]
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # the tag field itself is wrong
        path.append(str(error.get("ctx", {}).get("discriminator", "")).strip("'"))
    return ".".join(path) or None


def _most_specific(errors: list[dict]) -> dict:
    """Of the errors of a union's members, the one from the member that matched deepest into the body."""
    return max(errors, key=lambda error: len(error.get("loc", ())))


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = _most_specific(exc.errors())
    if first.get("type") == "json_invalid":
        return error_response(400, f"the request body is not valid JSON: {first.get('msg')}")
    param = _validation_param(first, exc.body)
    field = param.rsplit(".", 1)[-1] if param else None
    if first.get("type") == "extra_forbidden":
        return error_response(400, f"unknown field {param!r}: this server does not support it", param)
    if field in UNSUPPORTED:
        return error_response(400, f"{param} is not supported by this server: {UNSUPPORTED[field]}", param)
    # pydantic's constrained strings meet a lone surrogate before request_types does, and say it less plainly
    message = SURROGATE_MESSAGE if first.get("type") == "string_unicode" else first.get("msg", "invalid request")
    return error_response(400, f"{param}: {message}" if param else message, param)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    error = as_api_error(exc)
    return error_response(error.status, error.message, error.param, error.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_error)
    app.add_exception_handler(APIError, _on_error)
    app.add_exception_handler(ValueError, _on_error)
