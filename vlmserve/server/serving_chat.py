"""POST /v1/chat/completions: messages with text and images -> one answer, or a stream of chunks."""

import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from vlmserve.engine.outputs import CompletionOutput, RequestOutput
from vlmserve.families import MODEL_FAMILIES
from vlmserve.sampling_params import SamplingParams
from vlmserve.server.chat_images import resolve_images
from vlmserve.server.engine_client import EngineClient, Started, collect, until_disconnected
from vlmserve.server.errors import APIError
from vlmserve.server.logprobs import chat_logprobs
from vlmserve.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Delta,
)
from vlmserve.server.serving_tools import ToolUse, call_deltas, finish_reason, resolve_tool_use
from vlmserve.server.sse import event, event_stream


def chat_options(body) -> dict:
    """vLLM's rule: a conversation ending with an assistant message is continued from its text, unless the
    client asks for a generation prompt; explicit fields win (both true is refused by the chat format)."""
    ends_with_assistant = bool(body.messages) and body.messages[-1].role == "assistant"
    add_generation_prompt = body.add_generation_prompt
    continue_final = body.continue_final_message
    if continue_final is None:
        continue_final = ends_with_assistant and not add_generation_prompt
    if add_generation_prompt is None:
        add_generation_prompt = not continue_final
    return {"add_generation_prompt": add_generation_prompt, "continue_final_message": continue_final}


async def start_chat(body: ChatCompletionRequest, request: Request, key: str) -> tuple[Started, ToolUse | None]:
    """The chat request started (its images fetched, its prompt and grammar prepared), with its tools, if any.
    /v1/responses starts its requests here too."""
    client: EngineClient = request.app.state.client
    config = client.config
    tool_use = resolve_tool_use(body)
    tool_constraint = None if tool_use is None else await _tool_constraint(client, tool_use)

    async def prepare():
        messages = await resolve_images(body.messages, request.app.state.fetcher,
                                        max_images=config.max_images_per_request,
                                        max_image_bytes=config.max_image_bytes)
        tools = None if tool_use is None else tool_use.tools
        return await client.prepare(client.engine.process_chat, messages, tools=tools, **chat_options(body))

    return await client.start(request, key, body, prepare, tool_constraint), tool_use


async def create_chat_completion(body: ChatCompletionRequest, request: Request, key: str):
    client: EngineClient = request.app.state.client
    started, tool_use = await start_chat(body, request, key)
    params = started.params
    response_id, model = f"chatcmpl-{uuid.uuid4().hex}", client.config.served_model_name
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return event_stream(_chunks(client, started.outputs, params, response_id, model, include_usage, tool_use))
    last, choices = await until_disconnected(request, started.slot, started.outputs, collect(started.outputs))
    return ChatCompletionResponse(
        id=response_id, model=model, choices=[_choice(client, c, params, tool_use) for c in choices],
        usage=client.usage(last, sum(len(c.token_ids) for c in choices)))


async def _tool_constraint(client: EngineClient, tool_use: ToolUse):
    """The grammar tool_choice asks for, built on the preparation threads; 400 naming the tool it cannot be."""
    tool_format = MODEL_FAMILIES[client.engine.tokenizer.family].tool_format
    try:
        return await client.prepare(tool_use.constraint, tool_format)
    except ValueError as error:
        raise APIError(400, str(error), "tools") from None


def _choice(client: EngineClient, completion: CompletionOutput, params: SamplingParams,
            tool_use: ToolUse | None) -> ChatChoice:
    if tool_use is None:
        message, finish = AssistantMessage(content=completion.text), completion.finish_reason
    else:
        message, finish = tool_use.message(completion.text, completion.finish_reason)
    logprobs = None if completion.logprobs is None else chat_logprobs(
        client.engine.tokenizer, completion.token_ids, completion.logprobs, params.logprobs)
    return ChatChoice(index=completion.index, message=message, finish_reason=finish,
                      stop_reason=completion.stop_reason, logprobs=logprobs)


async def _chunks(client: EngineClient, outputs: AsyncIterator[RequestOutput], params: SamplingParams,
                  response_id: str, model: str, include_usage: bool, tool_use: ToolUse | None
                  ) -> AsyncIterator[str]:
    """Per choice: a role chunk, content chunks, then (with tools) the held-back content and each call's chunks,
    and a finish_reason chunk; then the usage chunk if asked."""
    def chunk(choices: list[ChatChunkChoice], usage=None) -> str:
        return event(ChatCompletionChunk(id=response_id, model=model, choices=choices, usage=usage))

    streamers = None if tool_use is None else [tool_use.streamer() for _ in range(params.n)]
    for index in range(params.n):
        yield chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    num_generated, last = 0, None
    async for last in outputs:
        for c in last.outputs:
            num_generated += len(c.token_ids)
            logprobs = None
            if params.logprobs is not None and c.token_ids:
                logprobs = chat_logprobs(client.engine.tokenizer, c.token_ids, c.logprobs, params.logprobs)
            text = c.text if streamers is None else streamers[c.index].feed(c.text)
            if text or logprobs:
                yield chunk([ChatChunkChoice(index=c.index, delta=Delta(content=text), logprobs=logprobs)])
            if c.finish_reason:
                finish = c.finish_reason
                if streamers is not None:
                    parsed = tool_use.kept(streamers[c.index].finish())
                    for delta in call_deltas(parsed):
                        yield chunk([ChatChunkChoice(index=c.index, delta=delta)])
                    finish = finish_reason(parsed, finish)
                yield chunk([ChatChunkChoice(index=c.index, delta=Delta(), finish_reason=finish)])
    if include_usage:
        yield chunk([], client.usage(last, num_generated))
