"""`vlmserve bench throughput`: offline throughput of `LLM.generate` on synthetic prompts, some with one image;
with compare_hf, transformers' `generate` in fixed batches on the same weights and prompts, same run.

Both systems' times include turning the prompts into model inputs (our input processor, for both), and both
generate exactly `output_len` greedy tokens per prompt (EOS ignored).
"""

import math
from dataclasses import asdict, dataclass

from vlmserve.bench import hf_peer
from vlmserve.bench.measure import now
from vlmserve.bench.model_source import ModelSource, describe, require_mllama
from vlmserve.bench.synthetic import synthetic_prompt
from vlmserve.llm import LLM
from vlmserve.sampling_params import SamplingParams


@dataclass(frozen=True)
class ThroughputSettings:
    num_prompts: int = 64
    input_len: int = 128
    output_len: int = 64
    image_fraction: float = 0.5
    image_tiles: int = 4
    hf_batch_size: int = 16

    def __post_init__(self):
        if min(self.num_prompts, self.output_len, self.image_tiles, self.hf_batch_size) < 1:
            raise ValueError("--num-prompts, --output-len, --image-tiles and --hf-batch-size must be >= 1")
        if not 0 <= self.image_fraction <= 1:
            raise ValueError(f"--image-fraction must be in [0, 1], got {self.image_fraction}")

    def has_image(self, index: int) -> bool:
        """Images spread evenly over the prompts: prompt i has one where floor((i + 1) f) > floor(i f)."""
        return math.floor((index + 1) * self.image_fraction) > math.floor(index * self.image_fraction)


def run_throughput(source: ModelSource, settings: ThroughputSettings, *, dtype: str, device: str,
                   load_format: str, transformers_compat: bool, compare_hf: bool, enforce_eager: bool = False) -> dict:
    if compare_hf or settings.image_fraction > 0:
        require_mllama(source, "synthetic images (--image-fraction > 0) and --compare-hf")
    if compare_hf:
        hf_peer.require_transformers()
    transformers_compat = transformers_compat or compare_hf  # transformers' numerics, for comparable tokens
    llm = LLM(str(source.path), dtype=dtype, device=device, load_format=load_format,
              transformers_compat=transformers_compat, enforce_eager=enforce_eager)
    engine = llm.engine
    info = {"benchmark": "throughput", "settings": asdict(settings),
            "model": describe(source, engine, load_format, transformers_compat)}
    prompts = [synthetic_prompt(seed, settings.input_len, settings.image_tiles * settings.has_image(seed),
                                engine.model_config) for seed in range(settings.num_prompts)]
    warm_tiles = [0] * (settings.image_fraction < 1) + [settings.image_tiles] * (settings.image_fraction > 0)
    warm = [synthetic_prompt(settings.num_prompts + i, settings.input_len, tiles, engine.model_config)
            for i, tiles in enumerate(warm_tiles)]  # one prompt of each kind the timed run has
    info["num_image_prompts"] = sum(bool(p["images"]) for p in prompts)
    info["vlmserve"], tokens = _run_ours(llm, prompts, warm, settings.output_len)
    if compare_hf:
        weights, processor = hf_peer.our_weights(engine.runner.model), engine.input_processor
        dtype, device = engine.runner.dtype, engine.device
        del llm, engine
        model = hf_peer.build_hf_model(source.path, weights, dtype, device)
        info["transformers"], hf_tokens = _run_hf(model, processor, prompts, warm, settings)
        info["comparison"] = {
            "throughput_ratio": info["vlmserve"]["output_tokens_per_s"] / info["transformers"]["output_tokens_per_s"],
            "identical_completions": sum(a == b for a, b in zip(tokens, hf_tokens))}
    return info


def _run_ours(llm: LLM, prompts: list[dict], warm: list[dict], output_len: int) -> tuple[dict, list[list[int]]]:
    device = llm.engine.device
    llm.generate(warm, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), use_tqdm=False)
    start = now(device)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True),
                           use_tqdm=False)
    seconds = now(device) - start
    tokens = [o.outputs[0].token_ids for o in outputs]
    return _rates(seconds, sum(len(o.prompt_token_ids) for o in outputs), sum(map(len, tokens))), tokens


def _run_hf(model, processor, prompts: list[dict], warm: list[dict],
            settings: ThroughputSettings) -> tuple[dict, list[list[int]]]:
    """generate() in batches of hf_batch_size; the time includes our input processor making its inputs."""
    hf_peer.run_hf(model, [hf_peer.hf_example(processor.process_prompt(p)) for p in warm], [2] * len(warm), 2)
    start = now(model.device)
    examples = [hf_peer.hf_example(processor.process_prompt(p)) for p in prompts]
    prepare_seconds = now(model.device) - start
    generate_seconds, tokens, _ = hf_peer.run_hf(model, examples, [settings.output_len] * len(examples),
                                                 settings.hf_batch_size)
    prompt_tokens = sum(len(e["input_ids"]) for e in examples)
    rates = _rates(prepare_seconds + generate_seconds, prompt_tokens, sum(map(len, tokens)))
    return {**rates, "batch_size": settings.hf_batch_size}, tokens


def _rates(seconds: float, prompt_tokens: int, output_tokens: int) -> dict:
    return {"seconds": seconds, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "output_tokens_per_s": output_tokens / seconds,
            "total_tokens_per_s": (prompt_tokens + output_tokens) / seconds}
