"""The offline Python API: `LLM(model).generate(prompts)` / `.chat(conversations)`."""

import functools
import itertools
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC

from tqdm import tqdm

from vlmserve.config import EngineConfig
from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.llm_engine import build_engine
from vlmserve.engine.outputs import OutputCollector, RequestOutput
from vlmserve.sampling_params import SamplingParams
from vlmserve.tool_calls.types import Tool


class LLM:
    """Loads a model directory and runs batches of prompts or conversations through the engine.

    `transformers_compat=True` reproduces transformers 5.x where it departs from Meta's reference
    (vision intermediate features, cross-attention of text before the first image); the default follows Meta.
    Other keyword arguments are `EngineConfig` fields (block_size, num_kv_blocks, max_num_seqs, ...);
    `tensor_parallel_size=N` splits the model over N processes, one device each: this one and N-1 it spawns (or,
    under torchrun, the processes torchrun started; see README). `shutdown()` stops them; so does exiting.
    """

    def __init__(self, model: str, *, dtype: str = EngineConfig.dtype, device: str = EngineConfig.device,
                 load_format: str = EngineConfig.load_format,
                 transformers_compat: bool = EngineConfig.transformers_compat, **engine_options):
        config = EngineConfig(model=str(model), dtype=dtype, device=device, load_format=load_format,
                              transformers_compat=transformers_compat, **engine_options)
        self.engine = build_engine(config)
        self._request_ids = itertools.count()

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes; this LLM cannot generate afterwards."""
        self.engine.shutdown()

    def get_tokenizer(self):
        """The model's tokenizer (encode, decode, special token ids)."""
        return self.engine.tokenizer

    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True,
                 priority: list[int] | None = None) -> list[RequestOutput]:
        """Each prompt: a string, {"prompt": str, "images": [...]} or {"prompt_token_ids": [...], "images": [...]}.
        `priority`: one per prompt, lower first (needs scheduling_policy="priority"), as vLLM's LLM takes it."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        process = self.engine.process_prompt
        return self._run([functools.partial(process, p) for p in prompts], sampling_params, use_tqdm, priority)

    def chat(self, messages, sampling_params=None, *, use_tqdm: bool = True, add_generation_prompt: bool = True,
             continue_final_message: bool = False, date_string: str | None = None,
             tools: list[dict] | None = None, priority: list[int] | None = None) -> list[RequestOutput]:
        """One conversation (a list of OpenAI-style messages) or a list of them. `tools` (OpenAI's chat tools) are
        offered in each prompt as the family's format writes them; `vlmserve.tool_calls.parser.parse_tool_calls`
        reads the calls out of the answers. `priority`: as for generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        options = dict(add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                       date_string=date_string, tools=None if tools is None else [Tool.from_openai(t) for t in tools])
        process = self.engine.process_chat
        return self._run([functools.partial(process, c, **options) for c in conversations], sampling_params,
                         use_tqdm, priority)

    def _run(self, prepare: list[Callable[[], PreparedInput]], sampling_params, use_tqdm: bool,
             priority: list[int] | None = None) -> list[RequestOutput]:
        """Stream the prompts through the engine: each is prepared (images decoded and tiled) only when the
        engine has room for more, so a long list never holds every image in memory at once. A prompt that cannot
        be prepared raises when it is reached, after the requests still in flight are aborted."""
        params = _per_prompt(sampling_params, len(prepare))
        if priority is not None and len(priority) != len(prepare):
            raise ValueError(f"priority has {len(priority)} values for {len(prepare)} prompts: give one per prompt")
        ids = [str(next(self._request_ids)) for _ in prepare]
        pending = list(zip(ids, prepare, params, priority or [0] * len(prepare)))[::-1]
        collectors = {request_id: OutputCollector() for request_id in ids}
        with tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm) as progress:
            while pending or self.engine.has_unfinished_requests():
                self._admit(pending, ids)
                for output in self.engine.step():
                    collectors[output.request_id].add(output)
                    progress.update(output.finished)
        return [collectors[i].result() for i in ids]

    def _admit(self, pending: list, ids: list[str]) -> None:
        """Add pending prompts while fewer than twice max_num_seqs requests are in the engine."""
        limit = 2 * self.engine.config.max_num_seqs
        while pending and self.engine.num_unfinished_requests() < limit:
            request_id, prepare, params, priority = pending.pop()
            try:
                self.engine.add_request(request_id, prepare(), params, priority=priority)
            except Exception:
                for other in ids:
                    self.engine.abort_request(other)
                raise


def _per_prompt(sampling_params, count: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    if isinstance(sampling_params, SequenceABC) and len(sampling_params) == count:
        return list(sampling_params)
    raise ValueError("sampling_params must be one SamplingParams or a list with one per prompt")
