"""The server's side of the engine: admission (429 past the queue limit), input preparation off the event loop,
metered generation, and cancelling work whose client has gone.

Preparation (tokenizing, decoding and tiling images, compiling output grammars) runs on a pool of its own threads,
and all of it releases the GIL for its heavy parts, so neither the event loop nor the engine's thread waits on it.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request

from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.outputs import CompletionOutput, OutputCollector, RequestOutput
from vlmserve.sampling_params import SamplingParams, StructuredOutputsParams
from vlmserve.server.auth import BATCH_OWNER
from vlmserve.server.config import PROMPT_CHARS_PER_TOKEN, ServerConfig
from vlmserve.server.errors import APIError, ClientDisconnected
from vlmserve.server.metrics import Metrics
from vlmserve.server.protocol import SamplingRequest, Usage
from vlmserve.server.sampling import constraint_error, reject_unsupported, sampling_params

RETRY_AFTER_S = 1
PREPARE_THREADS = 4
T = TypeVar("T")


@dataclass
class Slot:
    """One admitted request, holding `weight` places (its n sequences); `release` (idempotent) frees them."""

    client: "EngineClient"
    key: str
    weight: int = 1
    arrival: float = field(default_factory=time.monotonic)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.client.num_active -= self.weight


@dataclass
class Started:
    """A request the engine has accepted: its parameters, its outputs (the first one included) and its slot."""

    params: SamplingParams
    outputs: AsyncIterator[RequestOutput]
    slot: Slot


class EngineClient:
    def __init__(self, engine: AsyncLLMEngine, config: ServerConfig, metrics: Metrics):
        self.engine, self.config, self.metrics = engine, config, metrics  # the AsyncLLMEngine is all it uses
        self.num_active = 0  # sequences of the admitted requests
        self.max_prompt_chars = config.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * engine.max_model_len
        self._aborts: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="vlmserve-prepare")

    def close(self) -> None:
        """Release the preparation threads (the server has drained)."""
        self._pool.shutdown(wait=False)

    @property
    def engine_dead(self) -> bool:
        return self.engine.is_stopped

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.served_model_name:
            raise APIError(404, f"model {model!r} does not exist; this server serves "
                                f"{self.config.served_model_name!r}", "model")

    def admit(self, key: str, num_seqs: int = 1, background: bool = False) -> Slot:
        """Places for a request's `num_seqs` sequences: max_num_seqs running plus max_queue waiting, else 429.
        Batch lines (`background`) take none: the batch runner bounds how many run, below interactive ones."""
        limit = self.engine.config.max_num_seqs + self.config.max_queue
        if num_seqs > limit:
            raise APIError(400, f"n ({num_seqs}) is more than this server can ever run at once ({limit})", "n")
        if background:
            return Slot(self, key, 0)
        if self.num_active + num_seqs > limit:
            raise APIError(429, f"the server is at capacity ({limit} sequences admitted); retry shortly",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self.num_active += num_seqs
        return Slot(self, key, num_seqs)

    def check_prompt_size(self, body) -> None:
        """400 (as for any prompt too long for the context) for prompt text past the limit, before anything
        tokenizes it."""
        chars, param = prompt_chars(body)
        if chars > self.max_prompt_chars:
            raise APIError(400, f"the prompt text has {chars} characters; this server takes at most "
                                f"{self.max_prompt_chars} (see --max-prompt-chars)", param)

    async def prepare(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Tokenizing, decoding and tiling images, compiling grammars: CPU work for the preparation threads, never
        the event loop or the engine's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def start(self, request: Request, key: str, body: SamplingRequest,
                    prepare: Callable[[], Awaitable[PreparedInput]],
                    tool_constraint: StructuredOutputsParams | None = None) -> Started:
        """What every generating endpoint does first: check the model and the fields, take places in the queue,
        prepare the input, its sampling parameters and its output grammar (giving the places back if that fails),
        then start generating and wait for the first output, so that errors the engine raises when the request
        is added become an HTTP error rather than a broken stream. `tool_constraint`: the grammar of its
        tool_choice."""
        self.check_model(body.model)
        reject_unsupported(body)
        self.check_prompt_size(body)
        background = BATCH_OWNER in request.scope
        slot = self.admit(key, body.n, background)
        try:
            prepared = await prepare()
            params = sampling_params(body, len(prepared.prompt_token_ids), self.engine.max_model_len,
                                     self.config.max_output_tokens, tool_constraint)
            grammar = (None if params.structured_outputs is None
                       else await self.compile_grammar(body, params, tool_constraint))
        except BaseException:
            slot.release()
            raise
        outputs = self.generate(prepared, params, slot, grammar, body.priority, background)
        first = await until_disconnected(request, slot, outputs, anext(outputs))
        return Started(params, with_first(first, outputs), slot)

    async def compile_grammar(self, body: SamplingRequest, params: SamplingParams,
                              tool_constraint: StructuredOutputsParams | None = None):
        """The request's output grammar, compiled on the preparation threads (within the engine's budget)."""
        try:
            return await self.prepare(self.engine.compile_grammar, params.structured_outputs)
        except ValueError as error:
            raise constraint_error(body, error, tool_constraint) from None

    def usage(self, prompt: RequestOutput | PreparedInput, completion_tokens: int) -> Usage:
        """What answering `prompt` (its tokens and images) with `completion_tokens` counts and costs."""
        price = self.config.pricing.price(self.config.served_model_name)
        prompt_tokens, num_images = len(prompt.prompt_token_ids), prompt.num_images
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens, num_images=num_images,
                     num_image_tiles=prompt.num_image_tiles,
                     cost=price.cost(prompt_tokens, completion_tokens, num_images))

    async def generate(self, prepared: PreparedInput, params: SamplingParams, slot: Slot, grammar=None,
                       priority: int = 0, background: bool = False) -> AsyncIterator[RequestOutput]:
        """The engine's deltas, metered; releases `slot` when done. Closing it aborts the request."""
        request_id, num_generated, started, finished = uuid.uuid4().hex, 0, False, False
        first_at = last_at = None  # when its first and latest new tokens came
        try:
            async with aclosing(self.engine.generate(prepared, params, request_id, grammar, priority,
                                                     background)) as outputs:
                async for output in outputs:
                    new = sum(len(c.token_ids) for c in output.outputs)
                    if new:
                        now = time.monotonic()
                        if first_at is None:
                            first_at = now
                            self.metrics.time_to_first_token.observe(now - slot.arrival)
                        else:
                            self.metrics.inter_token_latency.observe(now - last_at)
                        last_at = now
                    num_generated, started, finished = num_generated + new, True, output.finished
                    yield output
        finally:
            slot.release()
            if started:
                self._record(prepared, num_generated, slot)
            if num_generated > 1:
                self.metrics.time_per_output_token.observe((last_at - first_at) / (num_generated - 1))
            if not finished:
                await self._abort(request_id)

    async def _abort(self, request_id: str) -> None:
        """Abort in a task of its own: a cancelled stream (anyio cancels every await in its scope) must not
        cancel the abort too, or the engine would go on generating for nobody."""
        task = asyncio.ensure_future(self.engine.abort(request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)
        await asyncio.shield(task)

    def _record(self, prepared: PreparedInput, num_generated: int, slot: Slot) -> None:
        usage = self.usage(prepared, num_generated)
        self.metrics.record_request(prompt_tokens=usage.prompt_tokens, completion_tokens=num_generated,
                                    num_images=usage.num_images, cost=usage.cost, key=slot.key,
                                    latency_s=time.monotonic() - slot.arrival)


def prompt_chars(body) -> tuple[int, str]:
    """Characters of text in a request's prompt or messages, and the field that holds them."""
    prompt = getattr(body, "prompt", None)
    if prompt is not None:
        return (len(prompt) if isinstance(prompt, str) else 0), "prompt"
    contents = [message.content for message in body.messages]
    return sum(len(c) if isinstance(c, str) else sum(len(getattr(part, "text", "")) for part in c)
               for c in contents if c is not None), "messages"


async def until_disconnected(request: Request, slot: Slot, outputs: AsyncIterator, awaitable: Awaitable):
    """Await `awaitable` (a step of `outputs`) unless the client disconnects first: then, or if it fails, close
    `outputs` (aborting the request), free `slot` and raise (ClientDisconnected for a client gone)."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise ClientDisconnected()
        return task.result()
    except BaseException:
        if not task.done():  # the client left, or this request was cancelled (a batch line, a shutdown)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        slot.release()
        await outputs.aclose()
        raise
    finally:
        watcher.cancel()


async def with_first(first: RequestOutput, outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    """`first`, then the rest of `outputs`; closing it closes `outputs` (which aborts the request)."""
    try:
        yield first
        async for output in outputs:
            yield output
    finally:
        await outputs.aclose()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect(outputs: AsyncIterator[RequestOutput]) -> tuple[RequestOutput, list[CompletionOutput]]:
    """Join a request's deltas: the last output, and per choice (by index) its whole text, ids and logprobs."""
    collector = OutputCollector()
    async for output in outputs:
        collector.add(output)
    return collector.last, collector.completions()
