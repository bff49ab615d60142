"""The engine core both front ends drive: requests in, one scheduled step at a time, outputs back."""

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from vlmserve.config import EngineConfig
from vlmserve.distributed import launch
from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.cuda_graphs import graphs_wanted
from vlmserve.engine.executor import (Executor, check_tensor_parallel, load_shard, resolve_device, run_worker,
                                      spawned_worker)
from vlmserve.engine.input_processor import InputProcessor, PreparedInput
from vlmserve.engine.model_runner import ModelRunner
from vlmserve.engine.outputs import CompletionOutput, RequestOutput
from vlmserve.engine.scheduler import Scheduler, SchedulerConfig
from vlmserve.engine.sequence import Sequence
from vlmserve.engine.structured_output import StructuredOutputManager
from vlmserve.families import resolve_model_family
from vlmserve.models.loader import read_config
from vlmserve.sampling_params import SamplingParams
from vlmserve.tokenizer.detokenizer import IncrementalDetokenizer
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


@dataclass
class _Completion:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    text: str = ""


@dataclass
class _Request:
    request_id: str
    prepared: PreparedInput
    completions: list[_Completion] = field(default_factory=list)
    error: str | None = None  # why the engine failed it

    @property
    def finished(self) -> bool:
        return all(c.seq.is_finished for c in self.completions)


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


class LLMEngine:
    """The scheduler, tokenizer and sampler; the model on one device, or split over `tensor_parallel_size` ranks
    (this process is rank 0: it spawns the others, or joins them under torchrun; see executor.py).

    Under torchrun every process builds the engine; on ranks other than 0 the constructor serves rank 0's steps
    until it stops, then raises SystemExit(0): those processes never produce output.
    """

    def __init__(self, config: EngineConfig):
        self.config = config
        check_tensor_parallel(config)
        ranks = launch.start_ranks(config.tensor_parallel_size, resolve_device(config.device), spawned_worker,
                                   (config,))
        if ranks.rank > 0:
            run_worker(config, ranks)
            raise SystemExit(0)
        self.device = ranks.device
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
        self.requests: dict[str, _Request] = {}

    def add_request(self, request_id: str, prepared: PreparedInput, params: SamplingParams, grammar=None) -> None:
        """Queue a request. `grammar` is its structured_outputs already compiled (`structured_output.compile`, which
        a server runs off the engine's thread); when None and the request is constrained, it is compiled here."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        max_tokens = self._check_length(prepared, params)
        if max_tokens != params.max_tokens:
            params = replace(params, max_tokens=max_tokens)
        structured = params.structured_outputs
        if grammar is None and structured is not None:
            grammar = self.structured_output.compile(structured)
        request = _Request(request_id, prepared)
        for index in range(params.n):
            seq = self._new_sequence(request_id, prepared, params, index)
            if grammar is not None:
                self.structured_output.add(seq.seq_id, grammar, seq.stop_token_ids)
            detokenizer = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids,
                                                 skip_special_tokens=params.skip_special_tokens)
            request.completions.append(_Completion(seq, detokenizer))
            self.scheduler.add(seq)
        self.requests[request_id] = request

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

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        for completion in request.completions:
            if not completion.seq.is_finished:
                completion.seq.finish_reason = "abort"
                self._release(completion.seq)

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
        return bool(self.requests)

    def stats(self) -> EngineStats:
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
        )

    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; returns the requests it advanced (finished ones are then dropped)."""
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        result = self.runner.run(batch)
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
        touched: dict[str, _Request] = {}
        failed = list(result.failed)
        for seq, token_id, logprobs in zip(result.seqs, result.token_ids, result.logprobs):
            request = self.requests[seq.request_id]
            try:
                self._append_token(request.completions[seq.index], token_id, logprobs)
            except Exception as error:  # noqa: BLE001 - fails this request alone
                failed.append((seq, error))
            touched[seq.request_id] = request
        for seq, error in failed:
            touched[seq.request_id] = self._fail_request(seq, error)
        outputs = [self._output(request) for request in touched.values()]
        for request in touched.values():
            if request.finished:
                del self.requests[request.request_id]
        return outputs

    def _append_token(self, completion: _Completion, token_id: int, logprobs: dict[int, float] | None) -> None:
        seq = completion.seq
        seq.output_token_ids.append(token_id)
        self.structured_output.accept(seq.seq_id, token_id)
        if logprobs is not None:
            seq.output_logprobs.append(logprobs)
        previous_len = len(completion.text)
        completion.text += completion.detokenizer.step([token_id])
        reason = self._finish_reason(completion, token_id, previous_len)
        if reason is not None:
            if not isinstance(seq.stop_reason, str):  # text cut at a stop string keeps nothing after it
                completion.text += completion.detokenizer.flush()
            seq.finish_reason = reason
            self._release(seq)

    def _finish_reason(self, completion: _Completion, token_id: int, previous_len: int) -> str | None:
        seq, params = completion.seq, completion.seq.params
        num_outputs = len(seq.output_token_ids)
        if token_id in seq.stop_token_ids and num_outputs >= params.min_tokens:
            seq.stop_reason = token_id if token_id in params.stop_token_ids else None
            return "stop"
        if self.structured_output.is_terminated(seq.seq_id):
            return "stop"
        if params.stop and num_outputs >= params.min_tokens and self._truncate_at_stop(completion, previous_len):
            return "stop"
        if num_outputs >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def _truncate_at_stop(completion: _Completion, previous_len: int) -> bool:
        """Cut the text at the earliest stop string that this step's text completed."""
        params, text = completion.seq.params, completion.text
        search_from = max(0, previous_len - max(len(s) for s in params.stop) + 1)
        found = ((text.find(s, search_from), s) for s in params.stop)
        hits = [(position, s) for position, s in found if position >= 0]
        if not hits:
            return False
        position, stop = min(hits)
        end = position + len(stop) if params.include_stop_str_in_output else position
        completion.text = text[:end]
        completion.seq.stop_reason = stop
        return True

    def _fail_request(self, seq: Sequence, error: Exception) -> _Request:
        """End every completion of `seq`'s request with finish_reason "error"; the step goes on for the others."""
        request = self.requests[seq.request_id]
        if request.error is not None:  # another of its n sequences failed first
            return request
        logger.error("request %s failed in the engine; the other requests go on", seq.request_id,
                     exc_info=(type(error), error, error.__traceback__))
        request.error = f"{type(error).__name__}: {error}"
        for completion in request.completions:
            if not completion.seq.is_finished:
                completion.seq.finish_reason = "error"
                self._release(completion.seq)
        return request

    def _release(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.runner.release(seq)
        self.structured_output.release(seq.seq_id)

    @staticmethod
    def _output(request: _Request) -> RequestOutput:
        outputs = [
            CompletionOutput(
                index=c.seq.index, text=c.text, token_ids=list(c.seq.output_token_ids),
                finish_reason=c.seq.finish_reason, stop_reason=c.seq.stop_reason,
                logprobs=list(c.seq.output_logprobs) if c.seq.params.logprobs is not None else None,
            )
            for c in request.completions
        ]
        return RequestOutput(request.request_id, request.prepared.prompt, request.prepared.prompt_token_ids,
                             outputs, finished=request.finished, num_images=request.prepared.num_images,
                             error=request.error)
