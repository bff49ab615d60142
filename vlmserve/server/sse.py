"""Server-sent events as OpenAI streams them: `data: <json>` per chunk, then `data: [DONE]`.

A failure after the response has started can no longer change its status, so it goes out as one more event
holding the OpenAI error body, as vLLM does.
"""

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from vlmserve.server.errors import as_api_error, error_body

DONE = "data: [DONE]\n\n"


def event(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


async def _with_done(events: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for item in events:
            yield item
    except Exception as error:  # noqa: BLE001 - reported to the client, and logged by as_api_error if internal
        api_error = as_api_error(error)
        yield f"data: {json.dumps(error_body(api_error.status, api_error.message, api_error.param))}\n\n"
    yield DONE


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(_with_done(events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
