"""`vlmserve bench latency`: time to first token of one image request, and steady decode speed at fixed batch
sizes against the memory roofline; with compare_hf, transformers on the same weights and inputs, same run.

TTFT is the wall time from adding one request (its image already decoded and tiled by the input processor) until
its first token exists. Decode speed: every request of the batch is prefilled first, then `warmup` decode steps
run untimed and the rest of `output_len` are timed; tokens/s = batch x steps / time. Every request carries its own
random image and token ids, so no prefix-cache or image-cache hit shortens any measurement.
"""

import itertools
import statistics
from dataclasses import asdict, dataclass

import torch

from vlmserve.bench import hf_peer
from vlmserve.bench.measure import (
    copy_bandwidth,
    now,
    peak_memory,
    release_memory,
    reset_peak_memory,
)
from vlmserve.bench.model_source import ModelSource, describe, require_mllama
from vlmserve.bench.roofline import decode_step_bytes, roofline
from vlmserve.bench.synthetic import synthetic_prompt
from vlmserve.config import EngineConfig
from vlmserve.engine.llm_engine import LLMEngine, build_engine, resolve_device
from vlmserve.engine.vision_state import VisionState
from vlmserve.families import resolve_model_family
from vlmserve.sampling_params import SamplingParams

BLOCK_SIZE = EngineConfig.block_size


@dataclass(frozen=True)
class LatencySettings:
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    prompt_len: int = 48
    image_tiles: int = 4
    output_len: int = 32  # tokens per request in a decode run: 1 from prefill, then decode steps
    warmup: int = 3  # untimed TTFT runs, and untimed decode steps at the start of each decode run
    iters: int = 5  # timed TTFT runs (the median is reported)

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1 or len(set(self.batch_sizes)) < len(self.batch_sizes):
            raise ValueError(f"--batch-sizes must be distinct positive numbers, got {list(self.batch_sizes)}")
        if self.image_tiles < 1 or self.iters < 1 or self.warmup < 0:
            raise ValueError("--image-tiles and --iters must be >= 1, --warmup >= 0")
        if self.timed_steps < 1:
            raise ValueError(f"--output-len ({self.output_len}) must exceed --warmup ({self.warmup}) + 1: the first "
                             "token comes from prefill, then warm-up steps, then at least one timed step")

    @property
    def timed_steps(self) -> int:
        return self.output_len - 1 - self.warmup


def run_latency(source: ModelSource, settings: LatencySettings, *, dtype: str, device: str, load_format: str,
                transformers_compat: bool, compare_hf: bool, enforce_eager: bool = False) -> dict:
    require_mllama(source, "vlmserve bench latency")
    if compare_hf:
        hf_peer.require_transformers()
    transformers_compat = transformers_compat or compare_hf  # transformers' numerics, for comparable tokens
    engine = _build_engine(source, settings, dtype, device, load_format, transformers_compat, enforce_eager)
    device, dtype = engine.device, engine.runner.dtype
    info = {"benchmark": "latency", "model": describe(source, engine, load_format, transformers_compat),
            "settings": {**asdict(settings), "timed_decode_steps": settings.timed_steps}}
    ours, inputs = _measure_ours(engine, settings)
    weights = hf_peer.our_weights(engine.runner.model) if compare_hf else {}
    model_config, element_size = engine.model_config, engine.runner.kv_cache.element_size()
    del engine
    theirs = _measure_hf(source, weights, inputs, settings, dtype, device) if compare_hf else None
    release_memory()
    bandwidth = copy_bandwidth(device)
    info["copy_bandwidth"] = {"bytes_per_s": bandwidth, "convention": "bytes read + bytes written by a large "
                              "device-to-device tensor copy, per second"}
    weight_bytes = info["model"]["text_decoder_weight_bytes"]
    for system in filter(None, (ours, theirs)):
        for entry in system["decode"]:
            if "step_ms" in entry:
                step = decode_step_bytes(model_config, weight_bytes, element_size, entry.pop("context_lens"),
                                         [settings.image_tiles] * entry["batch_size"])
                entry.update(roofline(step, bandwidth, entry["step_ms"] / 1e3))
    info["vlmserve"] = ours
    if theirs is not None:
        info["transformers"] = theirs
        info["comparison"] = _compare(ours, theirs)
    return info


def _build_engine(source, settings, dtype, device, load_format, transformers_compat, enforce_eager) -> LLMEngine:
    """An engine whose KV pool holds the largest batch (each request: its image and its longest context), so that
    peak memory is the model plus what the benchmark needs, not a pool sized to the device."""
    largest = max(settings.batch_sizes)
    model_len = settings.prompt_len + settings.output_len + largest  # prefill steps may give early requests more
    model_config = resolve_model_family(source.config.get("model_type")).parse_config(source.config)
    per_request = -(-model_len // BLOCK_SIZE) + VisionState.blocks_per_image(model_config, BLOCK_SIZE)
    config = EngineConfig(model=str(source.path), dtype=dtype, device=device, load_format=load_format,
                          transformers_compat=transformers_compat, block_size=BLOCK_SIZE, max_num_seqs=largest,
                          max_model_len=model_len, num_kv_blocks=largest * per_request, enforce_eager=enforce_eager)
    reset_peak_memory(resolve_device(device))
    return build_engine(config)


def _measure_ours(engine: LLMEngine, settings: LatencySettings) -> tuple[dict, dict]:
    """Our TTFT and decode figures, and the prepared inputs each used (transformers gets the same)."""
    seeds = itertools.count()

    def prepare(count: int) -> list:
        return [_prepare(engine, next(seeds), settings) for _ in range(count)]

    inputs = {"ttft": prepare(settings.warmup + settings.iters)}
    ttft = [_ttft(engine, prepared, f"ttft-{i}") for i, prepared in enumerate(inputs["ttft"])][settings.warmup:]
    decode = []
    for batch_size in settings.batch_sizes:
        inputs[batch_size] = prepare(batch_size)
        decode.append(_decode(engine, inputs[batch_size], settings))
    memory, kind = peak_memory(engine.device)
    ours = {"ttft_ms": statistics.median(t for t, _ in ttft), "ttft_ms_all": [t for t, _ in ttft],
            "first_tokens": [token for _, token in ttft], "decode": decode, "peak_memory_bytes": memory,
            "peak_memory_kind": kind}
    return ours, inputs


def _prepare(engine: LLMEngine, seed: int, settings: LatencySettings):
    prompt = synthetic_prompt(seed, settings.prompt_len, settings.image_tiles, engine.model_config)
    prepared = engine.process_prompt(prompt)
    if prepared.multimodal.num_tiles != [settings.image_tiles]:
        raise ValueError(f"the synthetic image made {prepared.multimodal.num_tiles[0]} tiles, not "
                         f"{settings.image_tiles}")
    return prepared


def _ttft(engine: LLMEngine, prepared, request_id: str) -> tuple[float, int]:
    """(milliseconds from add_request to the first token, that token)."""
    start = now(engine.device)
    engine.add_request(request_id, prepared, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    outputs = []
    while engine.has_unfinished_requests():
        outputs = engine.step() or outputs
    elapsed = now(engine.device) - start
    return elapsed * 1e3, outputs[0].outputs[0].token_ids[0]


def _decode(engine: LLMEngine, prepared: list, settings: LatencySettings) -> dict:
    """Prefill the batch, run the warm-up decode steps, time the rest; every timed step must advance every request."""
    batch = len(prepared)
    params = SamplingParams(temperature=0, max_tokens=settings.output_len + batch, ignore_eos=True)
    ids = [f"decode-{batch}-{i}" for i in range(batch)]
    for request_id, item in zip(ids, prepared):
        engine.add_request(request_id, item, params)
    tokens: dict[str, list[int]] = {}

    def step() -> int:
        outputs = engine.step()
        for output in outputs:
            tokens.setdefault(output.request_id, []).extend(output.outputs[0].token_ids)
        return len(outputs)

    while len(tokens) < batch:
        step()
    for _ in range(settings.warmup):
        step()
    # A timed step feeds each request its last token: it attends to the prompt and every output so far.
    first_contexts = [len(item.prompt_token_ids) + len(tokens[i]) for i, item in zip(ids, prepared)]
    start = now(engine.device)
    for _ in range(settings.timed_steps):
        if step() != batch:
            raise RuntimeError(f"a decode step at batch {batch} left requests behind (KV cache too small?)")
    elapsed = now(engine.device) - start
    for request_id in ids:
        engine.abort_request(request_id)
    step_seconds = elapsed / settings.timed_steps
    mean_offset = (settings.timed_steps - 1) / 2
    return {"batch_size": batch, "step_ms": step_seconds * 1e3, "tokens_per_s": batch / step_seconds,
            "context_lens": [n + mean_offset for n in first_contexts],
            "tokens": [tokens[i][: settings.output_len] for i in ids]}


def _measure_hf(source: ModelSource, weights: dict, inputs: dict, settings: LatencySettings, dtype: torch.dtype,
                device: torch.device) -> dict:
    """transformers on our weights and the same prepared inputs, our engine and its KV pool gone."""
    model = hf_peer.build_hf_model(source.path, weights, dtype, device)
    reset_peak_memory(device)
    examples = {key: [hf_peer.hf_example(p) for p in prepared] for key, prepared in inputs.items()}
    ttft = hf_peer.hf_ttft(model, examples.pop("ttft"), settings.warmup)
    decode = []
    for batch in examples.values():
        entry = hf_peer.hf_decode(model, batch, settings.output_len)
        if "step_ms" in entry:  # decode steps 1 .. N-1 attend to prompt + 1 .. N-1 tokens
            entry["context_lens"] = [len(e["input_ids"]) + settings.output_len / 2 for e in batch]
        decode.append(entry)
    theirs = {**ttft, "decode": decode, "decode_method": "(time of generate(N) - time of generate(1)) / (N - 1)"}
    if device.type == "cuda":
        theirs["peak_memory_bytes"], theirs["peak_memory_kind"] = peak_memory(device)
    else:  # the process's peak RSS cannot be split between the two systems
        theirs["peak_memory_bytes"], theirs["peak_memory_kind"] = None, "not measured on the CPU"
    return theirs


def _compare(ours: dict, theirs: dict) -> dict:
    """Ratios, each > 1 where vlmserve is better, and whether the greedy tokens are the same."""
    decode_speedup, decode_identical = {}, {}
    for mine, peer in zip(ours["decode"], theirs["decode"]):
        if "tokens" in peer:
            decode_speedup[mine["batch_size"]] = mine["tokens_per_s"] / peer["tokens_per_s"]
            decode_identical[mine["batch_size"]] = sum(a == b for a, b in zip(mine["tokens"], peer["tokens"]))
    ttft_identical = sum(a == b for a, b in zip(ours["first_tokens"], theirs["first_tokens"]))
    memory = theirs["peak_memory_bytes"] / ours["peak_memory_bytes"] if theirs["peak_memory_bytes"] else None
    all_identical = ttft_identical == len(ours["first_tokens"]) and all(
        same == batch for batch, same in decode_identical.items())
    return {"ttft_speedup": theirs["ttft_ms"] / ours["ttft_ms"], "decode_speedup": decode_speedup,
            "peak_memory_ratio": memory, "identical_first_tokens": ttft_identical,
            "identical_decode_requests": decode_identical, "greedy_tokens_identical": all_identical}
