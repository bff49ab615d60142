"""The asyncio front end of the engine, which the HTTP server drives.

One background task owns the engine: while requests exist it runs `engine.step()` on the engine's own thread, so
the event loop keeps serving clients during a step, and hands each step's outputs to per-request queues. Every
call into the engine (add, abort, step) runs on that one thread: the engine is never used by two threads at once,
the event loop never blocks on it, and no other work (request preparation, grammar compiles) can queue in front
of a step.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from vlmserve.config import EngineConfig
from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.llm_engine import LLMEngine
from vlmserve.engine.outputs import CompletionOutput, RequestOutput
from vlmserve.sampling_params import SamplingParams

_ABORTED = object()  # queue item: abort() or shutdown() ended the request


class EngineDeadError(RuntimeError):
    """The engine loop stopped (a step raised, its error is the __cause__, or it was shut down)."""


class RequestFailedError(RuntimeError):
    """The engine failed this one request (its error is logged there); the engine and other requests go on."""


@dataclass
class _Sent:
    text: str = ""  # the latest cumulative text
    num_chars: int = 0  # how much of it was sent
    num_tokens: int = 0
    finished: bool = False


class _Stream:
    """One request's queue of engine outputs, and what of them its consumer has been sent."""

    def __init__(self, request_id: str, prepared: PreparedInput, params: SamplingParams):
        self.request_id, self.prepared, self.params = request_id, prepared, params
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sent = [_Sent() for _ in range(params.n)]
        # The engine looks for a stop string from this many characters before a step's new text and cuts the
        # text there, so until a completion finishes its last `holdback` characters may still be cut: hold them.
        self.holdback = max(map(len, params.stop), default=1) - 1

    def delta(self, output: RequestOutput) -> RequestOutput:
        """The engine's cumulative output -> only what is new, per completion that advanced or finished."""
        deltas = []
        for c in output.outputs:
            sent = self.sent[c.index]
            if sent.finished or (len(c.token_ids) == sent.num_tokens and c.finish_reason is None):
                continue
            end = len(c.text) if c.finish_reason else max(sent.num_chars, len(c.text) - self.holdback)
            logprobs = None if c.logprobs is None else c.logprobs[sent.num_tokens:]
            deltas.append(CompletionOutput(c.index, c.text[sent.num_chars:end], c.token_ids[sent.num_tokens:],
                                           c.finish_reason, c.stop_reason, logprobs))
            sent.text, sent.num_chars, sent.num_tokens = c.text, end, len(c.token_ids)
            sent.finished = c.finish_reason is not None
        return replace(output, outputs=deltas)

    def aborted(self) -> RequestOutput:
        """The last output of an aborted request: held-back text, finish_reason "abort"."""
        logprobs = None if self.params.logprobs is None else []
        outputs = [CompletionOutput(i, s.text[s.num_chars:], [], "abort", None, logprobs)
                   for i, s in enumerate(self.sent) if not s.finished]
        p = self.prepared
        return RequestOutput(self.request_id, p.prompt, p.prompt_token_ids, outputs, True, p.num_images)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmserve-engine")
        self._closed = False  # shutdown() has ended every request and released the thread
        self._streams: dict[str, _Stream] = {}
        self._wake = asyncio.Event()  # set when a request arrives, so an idle loop steps again
        self._loop_task: asyncio.Task | None = None
        self._dead: EngineDeadError | None = None
        self._failed: EngineDeadError | None = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncLLMEngine":
        return cls(LLMEngine(config))

    # Snapshots for /metrics, read while a step may run (len() is atomic); they count sequences, not requests.
    @property
    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.engine.scheduler.waiting)

    @property
    def is_stopped(self) -> bool:
        """True once the loop has failed, a tensor-parallel worker died, or the engine was shut down: no request can
        be served any more."""
        return self._dead is not None or self.engine.failure is not None

    @property
    def failure(self) -> EngineDeadError | None:
        """Why the engine died (its loop failed, or a worker process exited), or None: None after a shutdown."""
        if self._failed is None and self.engine.failure is not None:
            self._fail(self.engine.failure)
        return self._failed

    @property
    def kv_cache_usage(self) -> float:
        blocks = self.engine.scheduler.block_manager
        return 1 - blocks.num_free_blocks / blocks.num_blocks

    async def generate(self, prepared: PreparedInput, params: SamplingParams, request_id: str | None = None,
                       grammar=None) -> AsyncIterator[RequestOutput]:
        """Stream one request: one output per step that advanced it, carrying only the new text, token ids and
        logprobs; the last has finished=True. add_request's errors (ValueError) raise before anything is
        yielded; RequestFailedError when the engine fails this request later. Closing the generator early (client
        gone, task cancelled) aborts the request. `grammar`: structured_outputs compiled beforehand
        (`engine.structured_output.compile`), so no compile runs on the engine's thread."""
        if self.failure or self._dead:
            raise self._dead
        request_id = uuid.uuid4().hex if request_id is None else request_id
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already running")
        # Registered before the add, so the loop cannot produce an output for it that finds no stream.
        stream = self._streams[request_id] = _Stream(request_id, prepared, params)
        try:
            await self._on_engine_thread(self.engine.add_request, request_id, prepared, params, grammar)
            if self._streams.get(request_id) is not stream:  # abort() or a dead loop came during the add
                await self._on_engine_thread(self.engine.abort_request, request_id)
            self._start_loop()
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is _ABORTED:
                    yield stream.aborted()
                    return
                if item.error is not None:
                    raise RequestFailedError(f"the engine failed request {request_id}: {item.error}")
                yield stream.delta(item)
                if item.finished:
                    return
        finally:
            if self._streams.get(request_id) is stream:  # neither finished nor aborted: the consumer left
                del self._streams[request_id]
                await self._on_engine_thread(self.engine.abort_request, request_id)

    async def abort(self, request_id: str) -> None:
        """End a request now. Its blocks are free when this returns; its generator then yields a last output
        with finish_reason "abort" (and any text held back for stop strings) and ends. Unknown ids: no-op."""
        stream = self._streams.pop(request_id, None)  # first, so the loop drops outputs of a step in flight
        if stream is None and self._closed:
            return  # after shutdown() every request has ended
        try:
            await self._on_engine_thread(self.engine.abort_request, request_id)
        finally:
            if stream is not None:
                stream.queue.put_nowait(_ABORTED)

    async def shutdown(self) -> None:
        """Stop the loop and abort every request; later generate() calls raise EngineDeadError."""
        self._dead = self._dead or EngineDeadError("the engine was shut down")
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for request_id in list(self._streams):
            await self.abort(request_id)
        self._closed = True
        self._thread.shutdown(wait=False)  # idle now; what it still had queued runs first

    async def _on_engine_thread(self, fn, *args):
        """Run an engine call on the engine's thread, after the calls before it (a step in flight included)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _start_loop(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run_loop())
        self._wake.set()

    async def _run_loop(self) -> None:
        """Step while requests exist, else sleep until one arrives. If anything fails, every waiting and later
        request gets an EngineDeadError rather than hanging."""
        try:
            while True:
                outputs, busy = await self._on_engine_thread(
                    lambda: (self.engine.step(), self.engine.has_unfinished_requests()))
                for output in outputs:
                    stream = self._streams.get(output.request_id)
                    if stream is None:  # aborted while this step ran
                        continue
                    if output.finished:
                        del self._streams[output.request_id]
                    stream.queue.put_nowait(output)
                if not busy:
                    await self._wake.wait()
                    self._wake.clear()
        except Exception as error:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        """Mark the engine dead for `error`; every waiting request gets the EngineDeadError."""
        self._dead = self._failed = EngineDeadError(f"the engine failed: {type(error).__name__}: {error}")
        self._dead.__cause__ = error
        for stream in self._streams.values():
            stream.queue.put_nowait(self._dead)
        self._streams.clear()
