"""POST /v1/chat/completions: messages with text and images -> one answer, or a stream of chunks."""

import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from vlmserve.engine.outputs import RequestOutput
from vlmserve.sampling_params import SamplingParams
from vlmserve.server.chat_images import resolve_images
from vlmserve.server.engine_client import EngineClient, collect, until_disconnected
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


async def create_chat_completion(body: ChatCompletionRequest, request: Request, key: str):
    client: EngineClient = request.app.state.client
    config = client.config

    async def prepare():
        messages = await resolve_images(body.messages, request.app.state.fetcher,
                                        max_images=config.max_images_per_request,
                                        max_image_bytes=config.max_image_bytes)
        return await client.prepare(client.engine.process_chat, messages, **chat_options(body))

    started = await client.start(request, key, body, prepare)
    params = started.params
    response_id, model = f"chatcmpl-{uuid.uuid4().hex}", config.served_model_name
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return event_stream(_chunks(client, started.outputs, params, response_id, model, include_usage))
    last, choices = await until_disconnected(request, started.slot, started.outputs, collect(started.outputs))
    tokenizer = client.engine.tokenizer
    return ChatCompletionResponse(
        id=response_id, model=model,
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason,
                            stop_reason=c.stop_reason,
                            logprobs=None if c.logprobs is None else chat_logprobs(
                                tokenizer, c.token_ids, c.logprobs, params.logprobs))
                 for c in choices],
        usage=client.usage(len(last.prompt_token_ids), sum(len(c.token_ids) for c in choices), last.num_images))


async def _chunks(client: EngineClient, outputs: AsyncIterator[RequestOutput], params: SamplingParams,
                  response_id: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    """Per choice: a role chunk, content chunks, a finish_reason chunk; then the usage chunk if asked."""
    def chunk(choices: list[ChatChunkChoice], usage=None) -> str:
        return event(ChatCompletionChunk(id=response_id, model=model, choices=choices, usage=usage))

    for index in range(params.n):
        yield chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    num_generated, last = 0, None
    async for last in outputs:
        for c in last.outputs:
            num_generated += len(c.token_ids)
            logprobs = None
            if params.logprobs is not None and c.token_ids:
                logprobs = chat_logprobs(client.engine.tokenizer, c.token_ids, c.logprobs, params.logprobs)
            if c.text or logprobs:
                yield chunk([ChatChunkChoice(index=c.index, delta=Delta(content=c.text), logprobs=logprobs)])
            if c.finish_reason:
                yield chunk([ChatChunkChoice(index=c.index, delta=Delta(), finish_reason=c.finish_reason)])
    if include_usage:
        yield chunk([], client.usage(len(last.prompt_token_ids), num_generated, last.num_images))
