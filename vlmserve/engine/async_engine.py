"""The asyncio front end of the engine, which the HTTP server drives.

One background task owns the engine: while requests exist it runs `engine.step()` on the engine's own thread, so
the event loop keeps serving clients during a step, and hands each step's outputs to per-request queues. Every
call into the engine (add, abort, step) runs on that one thread: the engine is never used by two threads at once,
the event loop never blocks on it, and no other work (request preparation, grammar compiles) can queue in front
of a step.

The rest of what the server needs passes through here too, so it never touches the LLMEngine: read-only state
(config, tokenizer, max_model_len, num_embeddings, stats()) and input preparation (process_prompt, process_chat,
tokenize, compile_grammar), which runs on the caller's thread (the server's preparation pool), never the engine's.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from vlmserve.config import EngineConfig
from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.llm_engine import EngineStats, LLMEngine, build_engine
from vlmserve.engine.outputs import RequestOutput
from vlmserve.sampling_params import SamplingParams


class EngineDeadError(RuntimeError):
    """The engine loop stopped (a step raised, its error is the __cause__, or it was shut down)."""


class RequestFailedError(RuntimeError):
    """The engine failed this one request (its error is logged there); the engine and other requests go on."""


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmserve-engine")
        self._closed = False  # shutdown() has ended every request and released the thread
        self._streams: dict[str, asyncio.Queue] = {}  # per request: its outputs, in the order the engine made them
        self._wake = asyncio.Event()  # set when a request arrives, so an idle loop steps again
        self._loop_task: asyncio.Task | None = None
        self._dead: EngineDeadError | None = None
        self._failed: EngineDeadError | None = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncLLMEngine":
        """An engine for `config` (build_engine: under torchrun only rank 0 returns), not yet stepping."""
        return cls(build_engine(config))

    # The engine's read-only state and input preparation (see LLMEngine): safe from any thread, a step running.
    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def num_embeddings(self) -> int:
        return self.engine.num_embeddings

    @property
    def device(self):
        return self.engine.device

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def process_prompt(self, prompt) -> PreparedInput:
        return self.engine.process_prompt(prompt)

    def process_chat(self, messages: list[dict], **options) -> PreparedInput:
        return self.engine.process_chat(messages, **options)

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        return self.engine.tokenize(prompt, add_special_tokens)

    def compile_grammar(self, structured):
        """The grammar generate() takes; compile it on the caller's thread, not the engine's."""
        return self.engine.compile_grammar(structured)

    # Snapshots for /metrics, from stats(); they count sequences, not requests.
    @property
    def num_running(self) -> int:
        return self.engine.stats().num_running

    @property
    def num_waiting(self) -> int:
        return self.engine.stats().num_waiting

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
        return self.engine.stats().kv_cache_usage

    async def generate(self, prepared: PreparedInput, params: SamplingParams, request_id: str | None = None,
                       grammar=None, priority: int = 0, background: bool = False) -> AsyncIterator[RequestOutput]:
        """Stream one request: one output per step that advanced it, carrying only the new text, token ids and
        logprobs; the last has finished=True. add_request's errors (ValueError) raise before anything is
        yielded; RequestFailedError when the engine fails this request later. Closing the generator early (client
        gone, task cancelled) aborts the request. `grammar`: structured_outputs compiled beforehand
        (`compile_grammar`), so no compile runs on the engine's thread. `priority`, `background`: see
        LLMEngine.add_request."""
        if self.failure or self._dead:
            raise self._dead
        request_id = uuid.uuid4().hex if request_id is None else request_id
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already running")
        # Registered before the add, so the loop cannot produce an output for it that finds no queue.
        queue = self._streams[request_id] = asyncio.Queue()
        try:
            await self._on_engine_thread(self.engine.add_request, request_id, prepared, params, grammar, priority,
                                         background)
            if self._streams.get(request_id) is not queue:  # the loop died during the add
                await self._on_engine_thread(self.engine.abort_request, request_id)
            self._start_loop()
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.error is not None:
                    raise RequestFailedError(f"the engine failed request {request_id}: {item.error}")
                yield item
                if item.finished:
                    return
        finally:
            if self._streams.get(request_id) is queue:  # not finished: the consumer left
                del self._streams[request_id]
                await self._on_engine_thread(self.engine.abort_request, request_id)

    async def abort(self, request_id: str) -> None:
        """End a request now. Its blocks are free when this returns; its generator then yields what the step in
        flight made, then a last output with finish_reason "abort" (and any text held back for stop strings), and
        ends. Unknown or finished ids: no-op."""
        if request_id not in self._streams and self._closed:
            return  # after shutdown() every request has ended
        await self._on_engine_thread(self._abort, asyncio.get_running_loop(), request_id)

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

    # Outputs go to the queues from the engine's thread, so they reach them in the order the engine made them (a
    # step's before the abort that followed it), whichever coroutine awaits the call.
    def _step(self, loop: asyncio.AbstractEventLoop) -> bool:
        """One engine step, its outputs handed out; whether requests remain. On the engine's thread."""
        loop.call_soon_threadsafe(self._hand_out, self.engine.step())
        return self.engine.has_unfinished_requests()

    def _abort(self, loop: asyncio.AbstractEventLoop, request_id: str) -> None:
        """Abort in the engine, handing out the request's last output. On the engine's thread."""
        last = self.engine.abort_request(request_id)
        if last is not None:
            loop.call_soon_threadsafe(self._hand_out, [last])

    def _hand_out(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            queue = self._streams.get(output.request_id)
            if queue is None:  # its consumer left
                continue
            if output.finished:
                del self._streams[output.request_id]
            queue.put_nowait(output)

    def _start_loop(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run_loop())
        self._wake.set()

    async def _run_loop(self) -> None:
        """Step while requests exist, else sleep until one arrives. If anything fails, every waiting and later
        request gets an EngineDeadError rather than hanging."""
        try:
            while True:
                busy = await self._on_engine_thread(self._step, asyncio.get_running_loop())
                if not busy:
                    await self._wake.wait()
                    self._wake.clear()
        except Exception as error:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        """Mark the engine dead for `error`; every waiting request gets the EngineDeadError."""
        self._dead = self._failed = EngineDeadError(f"the engine failed: {type(error).__name__}: {error}")
        self._dead.__cause__ = error
        for queue in self._streams.values():
            queue.put_nowait(self._dead)
        self._streams.clear()
