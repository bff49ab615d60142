"""transformers' `MllamaForConditionalGeneration` as the peer: built from the same config, holding our model's
weights, fed exactly the token ids and pixel tensors our input processor made, decoding greedily.

transformers is a test extra, so it is imported only here and only when asked for. Timings go through
`generate()`, the way a transformers user runs the model: its per-step work (logits processing, stopping checks)
is the counterpart of our engine's (scheduling, sampling, detokenizing), which our timings include too.
"""

import statistics

import torch

from vlmserve.bench.measure import now, release_memory
from vlmserve.models.loader import hub_name

PAD_TOKEN = 128004


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ValueError("--compare-hf needs transformers: pip install 'vlmserve[test]'") from None


def build_hf_model(model_dir, weights: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device):
    """transformers' model for `model_dir`'s config.json with `weights` (our parameters, by Hub name) copied in;
    `weights` is emptied then, so that our copies are freed once the caller holds no other reference to them.
    Its EOS is unset, so generate() runs to max_new_tokens as our ignore_eos requests do."""
    require_transformers()
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    release_memory()  # whatever the caller dropped (our engine, its KV pool) goes before transformers allocates
    with torch.device(device):  # built where it runs: no host copy of a large model
        model = MllamaForConditionalGeneration._from_config(MllamaConfig.from_pretrained(model_dir), dtype=dtype)
    model = model.to(device)
    model.load_state_dict({name: weights[hub_name(name)] for name in model.state_dict()})
    weights.clear()
    model.generation_config.eos_token_id = None
    return model.eval()


def our_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our model's parameters by name, without the model: dropping the engine then frees its KV pool."""
    return {name: param.detach() for name, param in model.named_parameters()}


def hf_example(prepared) -> dict:
    """One prompt as transformers' unbatched inputs (cross-attention mask as transformers' processor builds it)."""
    ids = torch.tensor(prepared.prompt_token_ids)
    mm = prepared.multimodal
    if mm is None:
        return {"input_ids": ids}
    num_images, max_tiles = mm.aspect_ratio_mask.shape
    cross = torch.zeros(len(ids), num_images, max_tiles, dtype=torch.long)
    for k, ((start, end), tiles) in enumerate(zip(mm.token_ranges, mm.num_tiles)):
        cross[start:end, k, :tiles] = 1
    return {"input_ids": ids, "pixel_values": mm.pixel_values, "aspect_ratio_ids": mm.aspect_ratio_ids,
            "aspect_ratio_mask": mm.aspect_ratio_mask, "cross_attention_mask": cross}


def hf_batch(examples: list[dict]) -> dict:
    """Left-pad a list of same-kind examples into one generate() call."""
    longest = max(len(e["input_ids"]) for e in examples)
    batch = len(examples)
    ids = torch.full((batch, longest), PAD_TOKEN, dtype=torch.long)
    attention = torch.zeros(batch, longest, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, longest - n:] = e["input_ids"]
        attention[b, longest - n:] = 1
    inputs = {"input_ids": ids, "attention_mask": attention}
    if "pixel_values" in examples[0]:
        images = max(e["pixel_values"].shape[0] for e in examples)
        tiles, *pixel_shape = examples[0]["pixel_values"].shape[1:]
        pixels = torch.zeros(batch, images, tiles, *pixel_shape)
        ratio_ids = torch.zeros(batch, images, dtype=torch.long)
        ratio_mask = torch.zeros(batch, images, tiles, dtype=torch.long)
        cross = torch.zeros(batch, longest, images, tiles, dtype=torch.long)
        for b, e in enumerate(examples):
            k, n = e["pixel_values"].shape[0], len(e["input_ids"])
            pixels[b, :k] = e["pixel_values"]
            ratio_ids[b, :k] = e["aspect_ratio_ids"]
            ratio_mask[b, :k] = e["aspect_ratio_mask"]
            cross[b, longest - n:, :k] = e["cross_attention_mask"]
        inputs.update(pixel_values=pixels, aspect_ratio_ids=ratio_ids, aspect_ratio_mask=ratio_mask,
                      cross_attention_mask=cross)
    return inputs


def generate(model, examples: list[dict], max_new_tokens: int) -> list[list[int]]:
    """Exactly max_new_tokens greedy tokens for each example, batched in one left-padded generate() call on the
    model's device, pixels in its dtype."""
    inputs = {name: value.to(device=model.device, dtype=model.dtype if value.is_floating_point() else value.dtype)
              for name, value in hf_batch(examples).items()}
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             pad_token_id=PAD_TOKEN)
    return out[:, inputs["input_ids"].shape[1]:].tolist()


def run_hf(model, examples: list[dict], lengths: list[int], batch_size: int) -> tuple[float, list[list[int]], list]:
    """Text-only and image prompts in separate left-padded batches, each sorted by length to limit padding. A
    batch generates as many tokens as its longest request wants (generate() has one length per call); each
    request keeps its own first `lengths[i]`."""
    order = sorted(range(len(examples)), key=lambda i: ("pixel_values" in examples[i], len(examples[i]["input_ids"])))
    groups, current = [], []
    for i in order:
        if current and (len(current) == batch_size or
                        ("pixel_values" in examples[i]) != ("pixel_values" in examples[current[0]])):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    results: list[list[int] | None] = [None] * len(examples)
    start = now(model.device)
    for group in groups:
        new = generate(model, [examples[i] for i in group], max(lengths[i] for i in group))
        for i, tokens in zip(group, new):
            results[i] = tokens[: lengths[i]]
    elapsed = now(model.device) - start
    return elapsed, results, [len(g) for g in groups]


def hf_ttft(model, examples: list[dict], warmup: int) -> dict:
    """generate(max_new_tokens=1) per example, the first `warmup` untimed: the median and every timed value."""
    times, tokens = [], []
    for i, example in enumerate(examples):
        start = now(model.device)
        tokens.append(generate(model, [example], 1)[0][0])
        if i >= warmup:
            times.append((now(model.device) - start) * 1e3)
    return {"ttft_ms": statistics.median(times), "ttft_ms_all": times, "first_tokens": tokens[warmup:]}


def _timed(model, examples: list[dict], max_new_tokens: int) -> tuple[float, list]:
    start = now(model.device)
    tokens = generate(model, examples, max_new_tokens)
    return now(model.device) - start, tokens


def hf_decode(model, examples: list[dict], output_len: int, repeats: int = 3) -> dict:
    """Decode speed of one batch: (time of generate(N) - time of generate(1)) / (N - 1) per step, after a warm-up
    generate(2): both calls prefill alike, so their difference is N - 1 decode steps. Each time is the fastest of
    `repeats` (noise only adds time; one noisy reading of generate(1) made the difference negative on a busy
    machine). A batch that does not fit in memory is reported as such."""
    try:
        generate(model, examples, 2)
        one = min(_timed(model, examples, 1)[0] for _ in range(repeats))
        runs = [_timed(model, examples, output_len) for _ in range(repeats)]
        many, tokens = min(runs, key=lambda run: run[0])
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"batch_size": len(examples), "error": "out of memory"}
    step = (many - one) / (output_len - 1)
    return {"batch_size": len(examples), "step_ms": step * 1e3, "tokens_per_s": len(examples) / step,
            "tokens": tokens}
