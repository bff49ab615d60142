"""`vlmserve bench throughput`: offline throughput of `LLM.generate` (token-id prompts, some with one image) or
`LLM.chat` (chat requests of mixed lengths, some with one image of random size); with compare_hf, transformers'
`generate` on the same weights and prompts in fixed batches, one entry per batch size, same run.

Both systems' times include turning the prompts into model inputs (our input processor, for both), and both
generate each request's wanted number of greedy tokens (EOS ignored). Each of `repeat` timed runs of ours uses a
fresh engine, so its prefix and image caches start empty, as transformers starts every generate() from nothing;
each system's fastest run that no other process disturbed (measured from /proc) is reported. With hf_only,
transformers alone is timed: our engine is built once, untimed, for the weights and inputs transformers gets.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

from vlmserve.bench import hf_peer
from vlmserve.bench.measure import (
    OtherLoad,
    fastest_undisturbed,
    host,
    is_disturbed,
    now,
    release_memory,
)
from vlmserve.bench.model_source import ModelSource, describe, require_mllama
from vlmserve.bench.synthetic import CHAT_DATE, synthetic_chats, synthetic_prompt
from vlmserve.families import resolve_model_family
from vlmserve.llm import LLM
from vlmserve.sampling_params import SamplingParams

PROMPT_KINDS = ("tokens", "chat")


@dataclass(frozen=True)
class ThroughputSettings:
    num_prompts: int = 64
    input_len: int = 128  # tokens prompts only
    output_len: int = 64
    image_fraction: float = 0.5  # tokens prompts only: chat prompts carry an image one in three
    image_tiles: int = 4  # tokens prompts only
    hf_batch_sizes: tuple[int, ...] = (16,)
    prompts: str = "tokens"
    output_lens: tuple[int, int] | None = None  # (min, max): each request wants its own count, drawn uniformly
    repeat: int = 1
    seed: int = 0
    prefix_caching: bool = True

    def __post_init__(self):
        if min(self.num_prompts, self.output_len, self.image_tiles, self.repeat, *self.hf_batch_sizes) < 1:
            raise ValueError("--num-prompts, --output-len, --image-tiles, --repeat and --hf-batch-size must be >= 1")
        if not 0 <= self.image_fraction <= 1:
            raise ValueError(f"--image-fraction must be in [0, 1], got {self.image_fraction}")
        if self.prompts not in PROMPT_KINDS:
            raise ValueError(f"--prompts must be one of {', '.join(PROMPT_KINDS)}, got {self.prompts!r}")
        if self.output_lens is not None and not 1 <= self.output_lens[0] <= self.output_lens[1]:
            raise ValueError(f"--output-lens MIN MAX needs 1 <= MIN <= MAX, got {list(self.output_lens)}")

    def has_image(self, index: int) -> bool:
        """Token prompts: images spread evenly, prompt i has one where floor((i + 1) f) > floor(i f)."""
        return math.floor((index + 1) * self.image_fraction) > math.floor(index * self.image_fraction)

    def output_lengths(self) -> list[int]:
        if self.output_lens is None:
            return [self.output_len] * self.num_prompts
        low, high = self.output_lens
        return np.random.default_rng(self.seed).integers(low, high + 1, self.num_prompts).tolist()


@dataclass(frozen=True)
class Workload:
    """The timed prompts: token-id prompts for LLM.generate, or conversations for LLM.chat."""
    prompts: list
    is_chat: bool

    def run(self, llm: LLM, params: list[SamplingParams]) -> list:
        if self.is_chat:
            return llm.chat(self.prompts, params, use_tqdm=False, date_string=CHAT_DATE)
        return llm.generate(self.prompts, params, use_tqdm=False)

    def prepare(self, processor) -> list:
        if self.is_chat:
            return [processor.process_chat(c, date_string=CHAT_DATE) for c in self.prompts]
        return [processor.process_prompt(p) for p in self.prompts]

    def with_image(self) -> list[bool]:
        if self.is_chat:
            return [any(part["type"] == "image" for part in c[-1]["content"]) for c in self.prompts]
        return [bool(p["images"]) for p in self.prompts]


def run_throughput(source: ModelSource, settings: ThroughputSettings, *, dtype: str, device: str,
                   load_format: str, transformers_compat: bool, compare_hf: bool, enforce_eager: bool = False,
                   hf_only: bool = False) -> dict:
    compare_hf = compare_hf or hf_only
    if compare_hf or settings.prompts == "chat" or settings.image_fraction > 0:
        require_mllama(source, "synthetic images (--image-fraction > 0, --prompts chat) and --compare-hf")
    if compare_hf:
        hf_peer.require_transformers()
    transformers_compat = transformers_compat or compare_hf  # transformers' numerics, for comparable tokens
    model_config = resolve_model_family(source.config.get("model_type")).parse_config(source.config)
    workload, warm = _prompts(settings, model_config)
    lengths = settings.output_lengths()

    def new_llm() -> LLM:
        return LLM(str(source.path), dtype=dtype, device=device, load_format=load_format,
                   transformers_compat=transformers_compat, enforce_eager=enforce_eager,
                   enable_prefix_caching=settings.prefix_caching)

    with_image = workload.with_image()
    info = {"benchmark": "throughput", "settings": asdict(settings), "host": host(),
            "num_image_prompts": sum(with_image)}
    if hf_only:
        llm, tokens = new_llm(), None
    else:
        info["vlmserve"], tokens, llm = _run_ours(new_llm, workload, warm, lengths, settings.repeat)
    engine = llm.engine
    info["model"] = describe(source, engine, load_format, transformers_compat)
    if compare_hf:
        # The input processor holds no model state and outlives the engine: transformers' inputs are prepared
        # exactly as ours, inside its timed runs too.
        weights, processor = hf_peer.our_weights(engine.runner.model), engine.input_processor
        dtype, device = engine.runner.dtype, engine.device
        del llm, engine
        model = hf_peer.build_hf_model(source.path, weights, dtype, device)
        info["transformers"] = []
        for entry, hf_tokens in _run_hf(model, processor, workload, warm, lengths, settings):
            if tokens is not None:
                entry.update(_compare(info["vlmserve"], entry, tokens, hf_tokens, with_image))
            info["transformers"].append(entry)
    if compare_hf and not hf_only:
        fastest = max(info["transformers"], key=lambda entry: entry["output_tokens_per_s"])
        info["comparison"] = {key: fastest[key] for key in ("batch_size", "throughput_ratio", "identical_completions")}
    return info


def _prompts(settings: ThroughputSettings, model_config) -> tuple[Workload, list[dict]]:
    """The timed workload, and warm-up token prompts (one of each kind it has) that share no cache block with it."""
    if settings.prompts == "chat":
        workload = Workload(synthetic_chats(settings.num_prompts, settings.seed), is_chat=True)
    else:
        workload = Workload([synthetic_prompt(settings.seed + i, settings.input_len,
                                              settings.image_tiles * settings.has_image(i), model_config)
                             for i in range(settings.num_prompts)], is_chat=False)
    kinds = sorted(set(workload.with_image()))  # [False], [True] or [False, True]
    warm = [synthetic_prompt(settings.seed + settings.num_prompts + i, settings.input_len,
                             settings.image_tiles * has_image, model_config) for i, has_image in enumerate(kinds)]
    return workload, warm


def _run_ours(new_llm, workload: Workload, warm: list[dict], lengths: list[int],
              repeat: int) -> tuple[dict, list[list[int]], LLM]:
    """`repeat` timed runs, each on a fresh engine warmed up on `warm`: (the figures, the last run's tokens, its
    LLM)."""
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
    runs, llm = [], None
    for _ in range(repeat):
        del llm  # the previous run's engine and KV pool go before the next is built
        release_memory()
        llm = new_llm()
        llm.generate(warm, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), use_tqdm=False)
        before = llm.engine.stats()
        with OtherLoad() as load:
            start = now(llm.engine.device)
            outputs = workload.run(llm, params)
            seconds = now(llm.engine.device) - start
        after = llm.engine.stats()
        runs.append({"seconds": seconds, "other_busy_cores": load.value,
                     "prefix_cache_hit_tokens": after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens,
                     "prefix_cache_queried_tokens": after.prefix_cache_queried_tokens
                     - before.prefix_cache_queried_tokens,
                     "images_encoded": after.num_images_encoded - before.num_images_encoded})
    tokens = [o.outputs[0].token_ids for o in outputs]
    prompt_lens = [len(o.prompt_token_ids) for o in outputs]
    figures = _best(runs, sum(prompt_lens), sum(map(len, tokens)))
    figures["prompt_len_range"] = [min(prompt_lens), max(prompt_lens)]
    return figures, tokens, llm


def _run_hf(model, processor, workload: Workload, warm: list[dict], lengths: list[int],
            settings: ThroughputSettings) -> list[tuple[dict, list[list[int]]]]:
    """generate() in left-padded batches of each batch size (text-only and image prompts apart), `repeat` timed
    runs each; a run's time includes our input processor making its inputs."""
    hf_peer.run_hf(model, [hf_peer.hf_example(processor.process_prompt(p)) for p in warm], [2] * len(warm), 2)
    entries = []
    for batch_size in settings.hf_batch_sizes:
        runs = []
        for _ in range(settings.repeat):
            with OtherLoad() as load:
                start = now(model.device)
                examples = [hf_peer.hf_example(p) for p in workload.prepare(processor)]
                _, tokens, calls = hf_peer.run_hf(model, examples, lengths, batch_size)
                seconds = now(model.device) - start
            runs.append({"seconds": seconds, "other_busy_cores": load.value})
        prompt_lens = [len(e["input_ids"]) for e in examples]
        entry = {"batch_size": batch_size, "generate_calls": calls,
                 **_best(runs, sum(prompt_lens), sum(map(len, tokens))),
                 "prompt_len_range": [min(prompt_lens), max(prompt_lens)]}
        entries.append((entry, tokens))
    return entries


def _best(runs: list[dict], prompt_tokens: int, output_tokens: int) -> dict:
    """The fastest undisturbed run's figures, with every run's time."""
    best = fastest_undisturbed(runs)
    return {**best, "all_seconds": [run["seconds"] for run in runs],
            "undisturbed_runs": sum(not is_disturbed(run["other_busy_cores"]) for run in runs),
            "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "output_tokens_per_s": output_tokens / best["seconds"],
            "total_tokens_per_s": (prompt_tokens + output_tokens) / best["seconds"]}


def _compare(ours: dict, theirs: dict, tokens: list[list[int]], hf_tokens: list[list[int]],
             with_image: list[bool]) -> dict:
    same = [a == b for a, b in zip(tokens, hf_tokens)]
    return {"throughput_ratio": ours["output_tokens_per_s"] / theirs["output_tokens_per_s"],
            "identical_completions": sum(same),
            "identical_text_only": sum(s for s, image in zip(same, with_image) if not image),
            "identical_with_image": sum(s for s, image in zip(same, with_image) if image)}
