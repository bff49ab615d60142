"""Benchmark results as readable tables on stdout, and as JSON."""

import json
from pathlib import Path

GB = 1e9


def write_json(results: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


def print_latency(results: dict) -> None:
    model, settings = results["model"], results["settings"]
    ours, theirs = results["vlmserve"], results.get("transformers")
    compare = results.get("comparison", {})
    print(f"vlmserve bench latency: {_model_line(model)}")
    print(f"prompt {settings['prompt_len']} tokens + one {settings['image_tiles']}-tile image; decode runs of "
          f"{settings['output_len']} tokens per request: 1 from prefill, {settings['warmup']} untimed, "
          f"{settings['timed_decode_steps']} timed")
    bandwidth = results["copy_bandwidth"]["bytes_per_s"]
    rate = f"{bandwidth / 1e12:.2f} TB/s" if bandwidth >= 1e12 else f"{bandwidth / 1e9:.1f} GB/s"
    print(f"copy bandwidth {rate} ({results['copy_bandwidth']['convention']})\n")
    pairs = list(zip(ours["decode"], theirs["decode"] if theirs else [{}] * len(ours["decode"])))
    rows = [(f"TTFT ms (median of {settings['iters']})", ours["ttft_ms"], theirs and theirs["ttft_ms"],
             _ratio(compare.get("ttft_speedup")))]
    for mine, peer in pairs:
        batch = mine["batch_size"]
        rows.append((f"decode tok/s, batch {batch}", mine["tokens_per_s"], peer.get("tokens_per_s", peer.get("error")),
                     _ratio(compare.get("decode_speedup", {}).get(batch))))
    memory_gb = [None if s is None or s["peak_memory_bytes"] is None else s["peak_memory_bytes"] / GB
                 for s in (ours, theirs)]
    rows.append((f"peak memory GB, {ours['peak_memory_kind']}", memory_gb[0], memory_gb[1],
                 _ratio(compare.get("peak_memory_ratio"))))
    _table(["figure", "vlmserve", "transformers", "ratio"], rows)
    if theirs:
        print("ratio > 1: vlmserve better (transformers' time or memory / ours; our tok/s / transformers')")
    print("\nroofline: a decode step reads the text decoder (embedding table excluded), the batch's KV cache and "
          "its images' cross-attention K/V")
    parts = ("total", "weights", "kv_cache", "vision_kv")
    roof = [(mine["batch_size"], *(mine["bytes_per_step"][part] / GB for part in parts), mine["roofline_ms"],
             mine["step_ms"], mine["fraction"], peer.get("step_ms"), peer.get("fraction")) for mine, peer in pairs]
    _table(["batch", "GB/step", "weights", "KV", "image K/V", "floor ms", "ours ms", "ours frac", "HF ms", "HF frac"],
           roof)
    if theirs:
        identical = compare["identical_decode_requests"]
        decode = ", ".join(f"batch {b} {n}/{b}" for b, n in identical.items())
        print(f"\ngreedy tokens identical to transformers: first tokens {compare['identical_first_tokens']}/"
              f"{len(ours['first_tokens'])}; whole decode runs {decode}")


def print_throughput(results: dict) -> None:
    model, settings = results["model"], results["settings"]
    print(f"vlmserve bench throughput: {_model_line(model)}")
    print(f"{settings['num_prompts']} prompts of {settings['input_len']} tokens ({results['num_image_prompts']} with "
          f"one {settings['image_tiles']}-tile image), {settings['output_len']} new tokens each\n")
    rows = []
    for name in ("vlmserve", "transformers"):
        system = results.get(name)
        if system:
            rows.append((name if name == "vlmserve" else f"transformers, batch {system['batch_size']}",
                         system["seconds"], system["output_tokens_per_s"], system["total_tokens_per_s"]))
    _table(["system", "wall s", "output tok/s", "total tok/s"], rows)
    compare = results.get("comparison")
    if compare:
        print(f"throughput ratio vlmserve / transformers: {compare['throughput_ratio']:.2f}x; identical greedy "
              f"completions {compare['identical_completions']}/{settings['num_prompts']}")


def _model_line(model: dict) -> str:
    weights = "dummy (random) weights" if model["load_format"] == "dummy" else "checkpoint weights"
    line = (f"{model['model']}, {model['parameters'] / 1e6:.1f}M parameters, {weights}, {model['dtype']} on "
            f"{model['device']}" + (", transformers numerics" if model["transformers_compat"] else ""))
    return line + (f"\n--hf-overrides {json.dumps(model['hf_overrides'])}" if model["hf_overrides"] else "")


def _ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[tuple]) -> None:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.1f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)
