"""/v1/responses: OpenAI's Responses API over the chat path, and the stored responses behind previous_response_id.

A request becomes a chat request (responses_items) and starts as chat's do (serving_chat.start_chat), so images,
tools, output formats, limits and metering are the chat path's. The answer becomes output items: a message with
the text (none when a tool answer has no text), then a function_call item per call; reaching max_output_tokens
makes the response "incomplete". Streams send OpenAI's event sequence: response.created, response.in_progress,
then per item output_item.added, its content_part/output_text or function_call_arguments events and
output_item.done, and response.completed (or response.incomplete); a failure after the start is an `error` event.
Responses are stored (`store`, default true) only on a server with --data-dir.
"""

import itertools
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from vlmserve.engine.outputs import RequestOutput
from vlmserve.server.engine_client import EngineClient, Started, collect, until_disconnected
from vlmserve.server.errors import APIError, as_api_error
from vlmserve.server.response_store import ResponseStore
from vlmserve.server.responses_items import Conversation, answer_message, chat_request, conversation, output_items
from vlmserve.server.responses_protocol import (
    DeletedResponse,
    IncompleteDetails,
    OutputItem,
    OutputMessage,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from vlmserve.server.serving_chat import start_chat
from vlmserve.server.serving_tools import ToolUse
from vlmserve.server.sse import event_stream, named_event
from vlmserve.tool_calls.types import ParsedOutput

NOT_STORING = "this server stores no responses: start it with --data-dir to use previous_response_id"


async def create_response(body: ResponsesRequest, request: Request, key: str):
    client: EngineClient = request.app.state.client
    store: ResponseStore | None = request.app.state.responses
    history = [] if body.previous_response_id is None else (
        await _stored(client, store, body.previous_response_id, "previous_response_id")).conversation
    talk = conversation(body, history)
    try:
        started, tool_use = await start_chat(chat_request(body, talk.messages), request, key)
    except Exception as error:  # noqa: BLE001 - every refusal names chat's fields; as_api_error logs internal ones
        raise talk.client_error(as_api_error(error)) from None
    answer = _Answer(body, client, store, talk, tool_use)
    if body.stream:
        return event_stream(answer.events(started), done=False)
    last, [completion] = await until_disconnected(request, started.slot, started.outputs, collect(started.outputs))
    return await answer.finish(answer.parse(completion.text), completion.finish_reason, last,
                               len(completion.token_ids))


async def retrieve_response(response_id: str, request: Request) -> ResponseObject:
    stored = await _stored(request.app.state.client, request.app.state.responses, response_id, None)
    return ResponseObject.model_validate(stored.response)


async def delete_response(response_id: str, request: Request) -> DeletedResponse:
    client: EngineClient = request.app.state.client
    store: ResponseStore | None = request.app.state.responses
    if store is None:
        raise APIError(404, NOT_STORING)
    if not await client.prepare(store.delete, response_id):
        raise APIError(404, f"no stored response has id {response_id!r}")
    return DeletedResponse(id=response_id)


async def _stored(client: EngineClient, store: ResponseStore | None, response_id: str, param: str | None):
    if store is None:
        raise APIError(404, NOT_STORING, param)
    stored = await client.prepare(store.load, response_id)
    if stored is None:
        raise APIError(404, f"no stored response has id {response_id!r} (never stored, deleted or expired)", param)
    return stored


class _Answer:
    """One response being answered: its ids, the response object at each stage, and storing it."""

    def __init__(self, body: ResponsesRequest, client: EngineClient, store: ResponseStore | None,
                 talk: Conversation, tool_use: ToolUse | None):
        self.body, self.client, self.talk, self.tool_use = body, client, talk, tool_use
        self.store = store if body.store is not False else None
        self.id, self.message_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def parse(self, text: str) -> ParsedOutput:
        return ParsedOutput(text) if self.tool_use is None else self.tool_use.parse(text)

    def response(self, status: str, output: list[OutputItem] = (), usage: ResponseUsage | None = None
                 ) -> ResponseObject:
        body = self.body
        text = {"format": {"type": "text"}} if body.text is None else {
            "format": {"type": "text"}, **body.text.model_dump(by_alias=True, exclude_none=True)}
        tool_choice = body.tool_choice or "auto"
        return ResponseObject(
            id=self.id, created_at=self.created_at, status=status, model=self.client.config.served_model_name,
            output=list(output), usage=usage,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=body.instructions, previous_response_id=body.previous_response_id,
            max_output_tokens=body.max_output_tokens, temperature=body.temperature, top_p=body.top_p, text=text,
            tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
            tool_choice=tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
            parallel_tool_calls=body.parallel_tool_calls is not False, store=self.store is not None,
            metadata=body.metadata or {})

    async def finish(self, parsed: ParsedOutput, finish_reason: str | None, last: RequestOutput,
                     output_tokens: int) -> ResponseObject:
        """The finished response, stored if asked; its output items' ids are the ones a stream announced."""
        status = "incomplete" if finish_reason == "length" else "completed"
        call_ids = [f"call_{uuid.uuid4().hex[:24]}" for _ in parsed.calls]
        items = output_items(self.message_id, parsed.content, list(parsed.calls), call_ids, status)
        usage = self.client.usage(last, output_tokens)
        response = self.response(status, items, ResponseUsage(
            input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens,
            num_images=usage.num_images, num_image_tiles=usage.num_image_tiles, cost=usage.cost))
        if self.store is not None:
            history = [*self.talk.turns, answer_message(parsed.content, list(parsed.calls), call_ids)]
            await self.client.prepare(self.store.save, self.id, history, response.model_dump())
        return response

    async def events(self, started: Started) -> AsyncIterator[str]:
        sequence = itertools.count()

        def emit(kind: str, **fields) -> str:
            return named_event({"type": kind, "sequence_number": next(sequence), **fields})

        try:
            for kind in ("response.created", "response.in_progress"):
                yield emit(kind, response=self.response("in_progress").model_dump())
            streamer = None if self.tool_use is None else self.tool_use.streamer()
            sent, opened, output_tokens, last, completion = [], False, 0, None, None
            async for last in started.outputs:
                completion = last.outputs[0]
                output_tokens += len(completion.token_ids)
                text = completion.text if streamer is None else streamer.feed(completion.text)
                if text and not opened:
                    opened = True
                    for event in self._message_opened(emit):
                        yield event
                if text:
                    sent.append(text)
                    yield emit("response.output_text.delta", item_id=self.message_id, output_index=0,
                               content_index=0, delta=text, logprobs=[])
            parsed = ParsedOutput("".join(sent)) if streamer is None else self._joined(sent, streamer.finish())
            response = await self.finish(parsed, completion.finish_reason, last, output_tokens)
            for event in self._items_finished(emit, response.output, opened, "".join(sent)):
                yield event
            kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
            yield emit(kind, response=response.model_dump())
        except Exception as error:  # noqa: BLE001 - reported to the client, and logged by as_api_error if internal
            api_error = as_api_error(error)
            yield emit("error", code=str(api_error.status), message=api_error.message, param=api_error.param)

    def _joined(self, sent: list[str], held: ParsedOutput) -> ParsedOutput:
        """The whole answer of a tool stream: the text already sent, then what the streamer held back."""
        kept = self.tool_use.kept(held)
        content = "".join(sent) + (kept.content or "")
        return ParsedOutput(content or None, kept.calls)

    def _message_opened(self, emit) -> list[str]:
        item = OutputMessage(id=self.message_id, status="in_progress", content=[])
        return [emit("response.output_item.added", output_index=0, item=item.model_dump()),
                emit("response.content_part.added", item_id=self.message_id, output_index=0, content_index=0,
                     part={"type": "output_text", "text": "", "annotations": []})]

    def _items_finished(self, emit, items: list[OutputItem], opened: bool, sent: str) -> list[str]:
        """Each item's closing events (the message's rest of text, then each call whole), in output order."""
        events = []
        for index, item in enumerate(items):
            if isinstance(item, OutputMessage):
                if not opened:
                    events.extend(self._message_opened(emit))
                text = item.content[0].text
                if text[len(sent):]:
                    events.append(emit("response.output_text.delta", item_id=item.id, output_index=index,
                                       content_index=0, delta=text[len(sent):], logprobs=[]))
                events += [emit("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                                text=text, logprobs=[]),
                           emit("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                                part=item.content[0].model_dump())]
            else:
                events += [emit("response.output_item.added", output_index=index, item={
                               **item.model_dump(), "arguments": "", "status": "in_progress"}),
                           emit("response.function_call_arguments.delta", item_id=item.id, output_index=index,
                                delta=item.arguments),
                           emit("response.function_call_arguments.done", item_id=item.id, output_index=index,
                                arguments=item.arguments, name=item.name)]
            events.append(emit("response.output_item.done", output_index=index, item=item.model_dump()))
        return events
