"""A request answered by the server's own app, in process: how batch lines reach the endpoints, so each line is
validated, limited, metered and answered exactly as the same request sent over HTTP.

`scope` entries travel with the request (Starlette's `request.scope`): a batch line carries its owner there,
which no HTTP client can set.
"""

import asyncio
import json

from starlette.types import ASGIApp, Message


async def call_app(app: ASGIApp, path: str, body: dict, **scope) -> tuple[int, dict]:
    """POST `body` as JSON to `path`; the status and JSON body of the answer. Cancelling the call disconnects
    the request, which aborts its generation."""
    payload = json.dumps(body).encode()
    answered = asyncio.Event()
    status, chunks, sent = 500, [], False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
               "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
               "headers": headers, "client": None, "server": None, **scope}, receive, send)
    return status, json.loads(b"".join(chunks) or b"null")
