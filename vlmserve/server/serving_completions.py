"""POST /v1/completions: a raw prompt (text or token ids) -> its continuation, or a stream of chunks.

The prompt is not wrapped in the chat format; text gets the BOS as the reference processor places it.
"""

import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from vlmserve.engine.outputs import CompletionOutput, RequestOutput
from vlmserve.sampling_params import SamplingParams
from vlmserve.server.engine_client import EngineClient, collect, until_disconnected
from vlmserve.server.logprobs import completion_logprobs
from vlmserve.server.protocol import CompletionChoice, CompletionRequest, CompletionResponse
from vlmserve.server.sse import event, event_stream


async def create_completion(body: CompletionRequest, request: Request, key: str):
    client: EngineClient = request.app.state.client
    prompt = body.prompt if isinstance(body.prompt, str) else {"prompt_token_ids": body.prompt}
    started = await client.start(request, key, body,
                                 lambda: client.prepare(client.engine.process_prompt, prompt))
    params = started.params
    response_id, model = f"cmpl-{uuid.uuid4().hex}", client.config.served_model_name
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return event_stream(_chunks(client, started.outputs, params, response_id, model, include_usage))
    last, choices = await until_disconnected(request, started.slot, started.outputs, collect(started.outputs))
    return CompletionResponse(
        id=response_id, model=model, choices=[_choice(client, c, params, 0) for c in choices],
        usage=client.usage(last, sum(len(c.token_ids) for c in choices)))


def _choice(client: EngineClient, c: CompletionOutput, params: SamplingParams, text_offset: int) -> CompletionChoice:
    logprobs = None
    if params.logprobs is not None:
        logprobs = completion_logprobs(client.engine.tokenizer, c.token_ids, c.logprobs or [], params.logprobs,
                                       text_offset)
    return CompletionChoice(index=c.index, text=c.text, logprobs=logprobs, finish_reason=c.finish_reason,
                            stop_reason=c.stop_reason)


async def _chunks(client: EngineClient, outputs: AsyncIterator[RequestOutput], params: SamplingParams,
                  response_id: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    text_offsets = [0] * params.n
    num_generated, last = 0, None
    async for last in outputs:
        for c in last.outputs:
            num_generated += len(c.token_ids)
            if c.text or c.token_ids or c.finish_reason:
                choice = _choice(client, c, params, text_offsets[c.index])
                if choice.logprobs is not None and choice.logprobs.tokens:
                    text_offsets[c.index] = choice.logprobs.text_offset[-1] + len(choice.logprobs.tokens[-1])
                yield event(CompletionResponse(id=response_id, model=model, choices=[choice]))
    if include_usage:
        usage = client.usage(last, num_generated)
        yield event(CompletionResponse(id=response_id, model=model, choices=[], usage=usage))
