"""The engine core both front ends drive: requests in, one scheduled step at a time, outputs back."""

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vlmserve.config import EngineConfig
from vlmserve.distributed import launch
from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.cpu_threads import CpuThreads
from vlmserve.engine.cuda_graphs import graphs_wanted
from vlmserve.engine.executor import (Executor, check_tensor_parallel, load_shard, resolve_device, run_worker,
                                      spawned_worker)
from vlmserve.engine.input_processor import InputProcessor, PreparedInput
from vlmserve.engine.model_runner import ModelRunner
from vlmserve.engine.output_processor import OutputProcessor
from vlmserve.engine.outputs import RequestOutput
from vlmserve.engine.scheduler import Scheduler, SchedulerConfig
from vlmserve.engine.sequence import Sequence
from vlmserve.engine.structured_output import StructuredOutputManager
from vlmserve.families import resolve_model_family
from vlmserve.models.loader import read_config
from vlmserve.sampling_params import SamplingParams
from vlmserve.tokenizer.llama4_standin import build_llama4_standin_tokenizer
from vlmserve.tokenizer.tokenizer import (LLAMA4_SPECIAL_TOKENS, TOKENIZER_FILE, SpecialTokens, Tokenizer,
                                         load_tokenizer)

logger = logging.getLogger("vlmserve.engine")


def engine_tokenizer(model_dir: Path, special: SpecialTokens, load_format: str) -> Tokenizer:
    """The checkpoint's tokenizer. A bare Llama 4 config run with dummy weights (benchmarks) has none and its answers
    are random anyway: it gets the stand-in tokenizer, whose special tokens sit at the real ids."""
    if load_format == "dummy" and special is LLAMA4_SPECIAL_TOKENS and not (model_dir / TOKENIZER_FILE).is_file():
        logger.warning("no %s in %s: using the stand-in Llama 4 tokenizer (dummy weights)", TOKENIZER_FILE, model_dir)
        return Tokenizer(build_llama4_standin_tokenizer(), source="the stand-in Llama 4 tokenizer", special=special)
    return load_tokenizer(model_dir, special)


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_preemptions: int
    kv_cache_usage: float  # fraction of KV blocks held by sequences
    prefix_cache_queried_tokens: int
    prefix_cache_hit_tokens: int
    encoder_cache_queried_images: int
    encoder_cache_hit_images: int  # images whose K/V were still in the pool: not encoded again
    num_images_encoded: int
    num_kv_blocks: int  # the KV pool's size in blocks (fixed once the engine is built)


def build_engine(config: EngineConfig) -> "LLMEngine":
    """The engine for `config`, after starting its tensor-parallel ranks (one device: nothing to start).

    With tensor_parallel_size N > 1 this process becomes rank 0 and spawns ranks 1..N-1, or, when torchrun started
    it, joins the N processes torchrun started. Under torchrun every process calls build_engine: on ranks other than
    0 it serves rank 0's steps until rank 0 stops, then raises SystemExit(0) without returning, so those processes
    never get an engine and never produce output; only rank 0 returns.
    """
    check_tensor_parallel(config)
    ranks = launch.start_ranks(config.tensor_parallel_size, resolve_device(config.device), spawned_worker, (config,))
    if ranks.rank > 0:
        run_worker(config, ranks)
        raise SystemExit(0)
    return LLMEngine(config, ranks)


class LLMEngine:
    """The scheduler, tokenizer and sampler; the model on one device, or split over `tensor_parallel_size` ranks
    (this process is rank 0 of `ranks`, which build_engine started; see executor.py). Build it with build_engine.

    The engine boundary, what a front end (LLM, AsyncLLMEngine and through it the server, the benchmarks) may call;
    everything else is internal:
    - requests: add_request, abort_request, step, has_unfinished_requests, num_unfinished_requests (one thread at
      a time: the engine's own);
    - inputs: process_prompt, process_chat, tokenize, compile_grammar (stateless CPU work: any thread, several at
      once, so a server runs them off the engine's thread);
    - read-only: config, tokenizer, max_model_len, device, num_embeddings, stats() (any thread, a step may run), and
      input_processor (for a peer that must prepare inputs exactly as the engine does: bench --compare-hf);
    - lifetime: failure, shutdown.
    """

    def __init__(self, config: EngineConfig, ranks: launch.Ranks):
        """Build rank 0's engine over `ranks` (already started: see build_engine): load its shard of the model,
        size the KV pool, and set up the tokenizer, scheduler and runner."""
        self.config = config
        self.device = ranks.device
        self.cpu_threads = CpuThreads(config.cpu_threads) if self.device.type == "cpu" else None
        loaded, num_blocks = load_shard(config, ranks)
        self.executor = Executor(ranks) if ranks.size > 1 else None
        self.model_config = loaded.config
        model_dir = Path(config.model)
        family = resolve_model_family(read_config(model_dir)["model_type"])
        self.tokenizer = engine_tokenizer(model_dir, family.special_tokens, config.load_format)
        self.input_processor = InputProcessor(
            self.tokenizer, family.image_prompts(model_dir, self.model_config, self.tokenizer),
            num_embeddings=family.num_embeddings(self.model_config), max_image_pixels=config.max_image_pixels,
            max_request_pixels=config.max_request_pixels)
        self.max_model_len = min(config.max_model_len or self.model_config.text.max_position_embeddings,
                                 num_blocks * config.block_size)
        self.structured_output = StructuredOutputManager(self.tokenizer, self.model_config.text.vocab_size)
        self.runner = ModelRunner(loaded.model, num_blocks, config.block_size, self.device, loaded.dtype,
                                  self.structured_output, family.vision_state,
                                  send_step=self.executor.send if self.executor else None)
        if graphs_wanted(config, self.device, loaded.model):
            self.runner.capture_decode_graphs(config.max_num_seqs, self.max_model_len)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, self.max_model_len),
            BlockManager(num_blocks, config.block_size,
                         blocks_per_image=family.vision_state.blocks_per_image(self.model_config, config.block_size),
                         enable_prefix_caching=config.enable_prefix_caching,
                         key_every_image=config.transformers_compat))
        self.eos_token_ids = tuple(sorted(set(self.tokenizer.stop_token_ids) | set(self.model_config.text.eos_token_ids)))
        self._requests: dict[str, list[Sequence]] = {}  # unfinished requests' sequences, one per completion
        self.output_processor = OutputProcessor(self.tokenizer, self.max_model_len)

    def add_request(self, request_id: str, prepared: PreparedInput, params: SamplingParams, grammar=None,
                    priority: int = 0, background: bool = False) -> None:
        """Queue a request. `grammar` is its structured_outputs already compiled (`compile_grammar`, which a
        server runs off the engine's thread); when None and the request is constrained, it is compiled here.
        `priority` (lower first) needs scheduling_policy "priority"; `background` (batch lines) ranks the request
        below every other, to be preempted first."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        if priority and self.config.scheduling_policy != "priority":
            raise ValueError(f"priority ({priority}) needs the priority scheduling policy (--scheduling-policy "
                             "priority); this engine schedules first come, first served")
        max_tokens = self._check_length(prepared, params)
        if max_tokens != params.max_tokens:
            params = replace(params, max_tokens=max_tokens)
        structured = params.structured_outputs
        if grammar is None and structured is not None:
            grammar = self.structured_output.compile(structured)
        seqs = [self._new_sequence(request_id, prepared, params, index) for index in range(params.n)]
        for seq in seqs:
            seq.priority, seq.background = priority, background
            if grammar is not None:
                self.structured_output.add(seq.seq_id, grammar, seq.stop_token_ids)
            self.scheduler.add(seq)
        self.output_processor.add(request_id, prepared, params, seqs[0].stop_token_ids)
        self._requests[request_id] = seqs

    def _new_sequence(self, request_id: str, prepared: PreparedInput, params: SamplingParams,
                      index: int = 0) -> Sequence:
        stop_ids = tuple(params.stop_token_ids) + (() if params.ignore_eos else self.eos_token_ids)
        return Sequence(Sequence.next_id(), request_id, list(prepared.prompt_token_ids), params,
                        multimodal=prepared.multimodal, index=index, stop_token_ids=stop_ids)

    def _check_length(self, prepared: PreparedInput, params: SamplingParams) -> int:
        """The request's max_tokens, defaulted to the room left in the context; too long raises.

        The room is the context length, or less when the KV cache could not hold that many tokens beside the
        request's images.
        """
        num_prompt = len(prepared.prompt_token_ids)
        block_manager = self.scheduler.block_manager
        image_blocks = block_manager.image_blocks(prepared.multimodal.content_hashes if prepared.multimodal else [])
        cache_tokens = (block_manager.num_blocks - image_blocks) * block_manager.block_size
        limit, what = min((self.max_model_len, "the context length"), (cache_tokens, "what the KV cache holds"))
        room = limit - num_prompt
        if room < 1:
            raise ValueError(f"the prompt has {num_prompt} tokens and {prepared.num_images} image(s); "
                             f"{what} is {limit} tokens")
        max_tokens = room if params.max_tokens is None else params.max_tokens
        if max_tokens > room:
            raise ValueError(f"max_tokens ({params.max_tokens}) + prompt tokens ({num_prompt}) exceeds {what} "
                             f"({limit} tokens)")
        return max_tokens

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """End a request now and free its blocks. Returns its last output (text held back for stop strings,
        finish_reason "abort"), or None for an id that is not running."""
        for seq in self._requests.pop(request_id, ()):
            if not seq.is_finished:
                self._release(seq)
        return self.output_processor.abort(request_id)

    def prompt_logits(self, prepared: PreparedInput) -> torch.Tensor:
        """The model's logits [prompt tokens, vocab] at every prompt position (scoring, parity checks)."""
        request_id = f"score-{Sequence.next_id()}"
        seq = self._new_sequence(request_id, prepared, SamplingParams())
        block_manager = self.scheduler.block_manager
        if not block_manager.can_allocate(seq, seq.num_tokens):
            raise ValueError("the KV cache has no room for this prompt now")
        block_manager.allocate(seq, seq.num_tokens)
        try:
            return self.runner.prefill_logits(seq)
        finally:
            block_manager.free(seq)

    @property
    def failure(self) -> Exception | None:
        """Why the engine cannot run steps any more (a tensor-parallel worker died), or None."""
        return self.executor.failure if self.executor else None

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (nothing to do on one device); the engine cannot step afterwards."""
        if self.executor is not None:
            self.executor.shutdown()

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def num_unfinished_requests(self) -> int:
        return len(self._requests)

    def process_prompt(self, prompt) -> PreparedInput:
        """A completion prompt (text, {"prompt": ..., "images": [...]} or {"prompt_token_ids": ...}) as model
        input: tokenized, images decoded and tiled. InputError (a ValueError) for a bad prompt."""
        return self.input_processor.process_prompt(prompt)

    def process_chat(self, messages: list[dict], **options) -> PreparedInput:
        """OpenAI-style messages in the model's chat format, as model input; `options`: add_generation_prompt,
        continue_final_message, date_string."""
        return self.input_processor.process_chat(messages, **options)

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        """The token ids of a text prompt; add_special_tokens: with the BOS, placed as process_prompt places it."""
        return self.tokenizer.encode(self.input_processor.with_bos(prompt) if add_special_tokens else prompt)

    def compile_grammar(self, structured):
        """StructuredOutputsParams -> the compiled grammar add_request takes (ValueError past the compile budget or
        for a bad constraint). Thread-safe: a server compiles on its own threads, never the engine's."""
        return self.structured_output.compile(structured)

    @property
    def num_embeddings(self) -> int:
        """Rows of the token embedding: the ids a prompt_token_ids prompt may use."""
        return self.input_processor.num_embeddings

    def stats(self) -> EngineStats:
        """A snapshot for metrics. Cheap, and safe to call from another thread while a step runs: each field is
        one atomic read (len() or an int), though fields may straddle a step (no consistency across them)."""
        scheduler, blocks = self.scheduler, self.scheduler.block_manager
        return EngineStats(
            num_running=len(scheduler.running), num_waiting=len(scheduler.waiting),
            num_preemptions=scheduler.num_preemptions,
            kv_cache_usage=1 - blocks.num_free_blocks / blocks.num_blocks,
            prefix_cache_queried_tokens=blocks.stats.queried_tokens,
            prefix_cache_hit_tokens=blocks.stats.hit_tokens,
            encoder_cache_queried_images=blocks.stats.queried_images,
            encoder_cache_hit_images=blocks.stats.hit_images,
            num_images_encoded=self.runner.vision.num_images_encoded,
            num_kv_blocks=blocks.num_blocks,
        )

    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; returns the requests it advanced, each with only what this step added (its
        new text, token ids and logprobs: deltas, never a history). Finished requests are then dropped."""
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        if self.cpu_threads is not None:
            self.cpu_threads.adjust()
        result = self.runner.run(batch)
        self.scheduler.update(batch)
        failed = list(result.failed)
        for seq, token_id, logprobs in zip(result.seqs, result.token_ids, result.logprobs):
            try:
                self._append_token(seq, token_id, logprobs)
            except Exception as error:  # noqa: BLE001 - fails this request alone
                failed.append((seq, error))
        for seq, error in failed:
            self._fail_request(seq, error)
        outputs = self.output_processor.step_outputs()
        for output in outputs:
            if output.finished:
                del self._requests[output.request_id]
        return outputs

    def _append_token(self, seq: Sequence, token_id: int, logprobs: dict[int, float] | None) -> None:
        seq.output_token_ids.append(token_id)
        self.structured_output.accept(seq.seq_id, token_id)
        grammar_done = self.structured_output.is_terminated(seq.seq_id)
        if self.output_processor.append(seq.request_id, seq.index, token_id, logprobs, seq.num_tokens, grammar_done):
            self._release(seq)

    def _fail_request(self, seq: Sequence, error: Exception) -> None:
        """End every completion of `seq`'s request with finish_reason "error"; the step goes on for the others."""
        if not self.output_processor.fail(seq.request_id, f"{type(error).__name__}: {error}"):
            return  # another of its n sequences failed first
        logger.error("request %s failed in the engine; the other requests go on", seq.request_id,
                     exc_info=(type(error), error, error.__traceback__))
        for other in self._requests[seq.request_id]:
            if not other.is_finished:
                self._release(other)

    def _release(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.runner.release(seq)
