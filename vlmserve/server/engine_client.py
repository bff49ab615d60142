"""The server's side of the engine: admission (429 past the queue limit), input preparation off the event loop,
metered generation, and cancelling work whose client has gone."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import Request

from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.outputs import CompletionOutput, RequestOutput
from vlmserve.sampling_params import SamplingParams
from vlmserve.server.config import ServerConfig
from vlmserve.server.errors import APIError, ClientDisconnected
from vlmserve.server.metrics import Metrics
from vlmserve.server.protocol import SamplingRequest, Usage
from vlmserve.server.sampling import reject_unsupported, sampling_params

RETRY_AFTER_S = 1


@dataclass
class Slot:
    """One admitted request; `release` (idempotent) frees its place in the queue."""

    client: "EngineClient"
    key: str
    arrival: float = field(default_factory=time.monotonic)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.client.num_active -= 1


@dataclass
class Started:
    """A request the engine has accepted: its parameters, its outputs (the first one included) and its slot."""

    params: SamplingParams
    outputs: AsyncIterator[RequestOutput]
    slot: Slot


class EngineClient:
    def __init__(self, engine: AsyncLLMEngine, config: ServerConfig, metrics: Metrics):
        self.engine, self.config, self.metrics = engine, config, metrics
        self.llm = engine.engine
        self.num_active = 0
        self._aborts: set[asyncio.Task] = set()

    @property
    def max_model_len(self) -> int:
        return self.llm.max_model_len

    @property
    def engine_dead(self) -> bool:
        return self.engine.is_stopped

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.served_model_name:
            raise APIError(404, f"model {model!r} does not exist; this server serves "
                                f"{self.config.served_model_name!r}", "model")

    def admit(self, key: str) -> Slot:
        """A place for one more request: max_num_seqs running plus max_queue waiting, else 429."""
        limit = self.llm.config.max_num_seqs + self.config.max_queue
        if self.num_active >= limit:
            raise APIError(429, f"the server is at capacity ({limit} requests admitted); retry shortly",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self.num_active += 1
        return Slot(self, key)

    async def prepare(self, fn: Callable[..., PreparedInput], *args, **kwargs) -> PreparedInput:
        """Tokenizing and image decoding/tiling are CPU work: a worker thread, not the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def start(self, request: Request, key: str, body: SamplingRequest,
                    prepare: Callable[[], Awaitable[PreparedInput]]) -> Started:
        """What every generating endpoint does first: check the model and the fields, take a place in the queue,
        prepare the input and its sampling parameters (giving the place back if that fails), then start
        generating and wait for the first output, so that errors the engine raises when the request is added
        become an HTTP error rather than a broken stream."""
        self.check_model(body.model)
        reject_unsupported(body)
        slot = self.admit(key)
        try:
            prepared = await prepare()
            params = sampling_params(body, len(prepared.prompt_token_ids), self.max_model_len,
                                     self.config.max_output_tokens)
        except BaseException:
            slot.release()
            raise
        outputs = self.generate(prepared, params, slot)
        first = await until_disconnected(request, slot, outputs, anext(outputs))
        return Started(params, with_first(first, outputs), slot)

    def usage(self, prompt_tokens: int, completion_tokens: int, num_images: int) -> Usage:
        price = self.config.pricing.price(self.config.served_model_name)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens, num_images=num_images,
                     cost=price.cost(prompt_tokens, completion_tokens, num_images))

    async def generate(self, prepared: PreparedInput, params: SamplingParams, slot: Slot
                       ) -> AsyncIterator[RequestOutput]:
        """The engine's deltas, metered; releases `slot` when done. Closing it aborts the request."""
        request_id, num_generated, started, finished = uuid.uuid4().hex, 0, False, False
        try:
            async with aclosing(self.engine.generate(prepared, params, request_id)) as outputs:
                async for output in outputs:
                    new = sum(len(c.token_ids) for c in output.outputs)
                    if new and not num_generated:
                        self.metrics.time_to_first_token.observe(time.monotonic() - slot.arrival)
                    num_generated, started, finished = num_generated + new, True, output.finished
                    yield output
        finally:
            slot.release()
            if started:
                self._record(prepared, num_generated, slot)
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
        usage = self.usage(len(prepared.prompt_token_ids), num_generated, prepared.num_images)
        self.metrics.record_request(prompt_tokens=usage.prompt_tokens, completion_tokens=num_generated,
                                    num_images=usage.num_images, cost=usage.cost, key=slot.key,
                                    latency_s=time.monotonic() - slot.arrival)


async def until_disconnected(request: Request, slot: Slot, outputs: AsyncIterator, awaitable: Awaitable):
    """Await `awaitable` (a step of `outputs`) unless the client disconnects first: then, or if it fails, close
    `outputs` (aborting the request), free `slot` and raise (ClientDisconnected for a client gone)."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientDisconnected()
        return task.result()
    except BaseException:
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
    choices: dict[int, CompletionOutput] = {}
    last = None
    async for last in outputs:
        for delta in last.outputs:
            choice = choices.setdefault(delta.index, CompletionOutput(delta.index, "", []))
            choice.text += delta.text
            choice.token_ids += delta.token_ids
            if delta.logprobs is not None:
                choice.logprobs = (choice.logprobs or []) + delta.logprobs
            choice.finish_reason, choice.stop_reason = delta.finish_reason, delta.stop_reason
    return last, [choices[i] for i in sorted(choices)]
