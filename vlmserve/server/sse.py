"""Server-sent events as OpenAI streams them: `data: <json>` per chunk, then `data: [DONE]`; the Responses API
names each event (`event: <type>`) and sends no [DONE].

A failure after the response has started can no longer change its status, so it goes out as one more event
holding the OpenAI error body, as vLLM does (the Responses stream sends its own `error` event instead).
"""

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from vlmserve.server.errors import as_api_error, error_body

DONE = "data: [DONE]\n\n"


def event(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def named_event(payload: dict) -> str:
    return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _with_done(events: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for item in events:
            yield item
    except Exception as error:  # noqa: BLE001 - reported to the client, and logged by as_api_error if internal
        api_error = as_api_error(error)
        yield f"data: {json.dumps(error_body(api_error.status, api_error.message, api_error.param))}\n\n"
    yield DONE


def event_stream(events: AsyncIterator[str], *, done: bool = True) -> StreamingResponse:
    return StreamingResponse(_with_done(events) if done else events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
