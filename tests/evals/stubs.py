"""Endpoints for the runner tests: any ASGI app served by uvicorn on a free loopback port, and a stub
OpenAI-compatible chat endpoint whose replies a test scripts."""

import base64
import hashlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.server.helpers import free_port

STUB_USAGE = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105, "cost": 0.001}


class ServedApp:
    """`with ServedApp(app) as served:` serves `app` at `served.url` (lifespan included) until the block ends;
    on a free port unless one is given."""

    def __init__(self, app, port: int | None = None):
        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServedApp":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def image_hashes(body: dict) -> list[str]:
    """sha256 of each image sent in a chat request's data URLs, in order: what EvalItem.image_hashes holds."""
    return [hashlib.sha256(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])).hexdigest()
            for message in body["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image_url"]


def prompt_text(body: dict) -> str:
    return "".join(part["text"] for message in body["messages"] if isinstance(message["content"], list)
                   for part in message["content"] if part["type"] == "text")


def request_identity(body: dict) -> tuple[str, tuple[str, ...]]:
    """What tells items apart in a request: the prompt text and the hashes of the images."""
    return prompt_text(body), tuple(image_hashes(body))


class StubEndpoint:
    """POST /v1/chat/completions answers `reply(body, number)` (number counts requests from 1; an async reply is
    awaited): a string is the assistant's text, a Response is sent as it is (errors). Every request body is kept in
    `requests`, its Authorization header in `authorizations`."""

    def __init__(self, reply: Callable[[dict, int], str | Response | Awaitable[str | Response]]):
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                self.authorizations.append(request.headers.get("authorization"))
                number = len(self.requests)
            answer = reply(body, number)
            if inspect.isawaitable(answer):
                answer = await answer
            if isinstance(answer, Response):
                return answer
            return {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": "stop"}], "usage": STUB_USAGE}

    def serve(self) -> ServedApp:
        return ServedApp(self.app)


def error(status: int, retry_after: str | None = None) -> JSONResponse:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return JSONResponse({"error": {"message": f"stub error {status}", "type": "stub", "param": None, "code": status}},
                        status_code=status, headers=headers)
