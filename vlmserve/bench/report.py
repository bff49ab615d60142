"""Benchmark results as readable tables on stdout, and as JSON."""

import json
from pathlib import Path

from vlmserve.bench.measure import BUSY_LIMIT

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
    model, settings, ours = results["model"], results["settings"], results.get("vlmserve")
    host, peers = results["host"], results.get("transformers", [])
    first = ours or peers[0]  # with --hf-only, transformers alone was timed
    print(f"vlmserve bench throughput: {_model_line(model)}")
    print(f"{_prompts_line(settings, results['num_image_prompts'])}; prompts of {first['prompt_len_range'][0]}-"
          f"{first['prompt_len_range'][1]} tokens ({first['prompt_tokens']} in all), {_output_line(settings)} "
          f"({first['output_tokens']} in all); {host['torch_threads']} torch threads on {host['machine']}")
    if settings["repeat"] > 1:
        print(f"each system's fastest of {settings['repeat']} runs that no other process disturbed (the fastest of "
              "all where every run was); vlmserve: a fresh engine per run")
    print()
    rows = [_throughput_row("vlmserve", ours, "-", "-")] if ours else []
    rows += [_throughput_row(f"transformers, batch {peer['batch_size']}", peer, _ratio(peer.get("throughput_ratio")),
                             f"{peer['identical_completions']}/{settings['num_prompts']}" if ours else "-")
             for peer in peers]
    _table(["system", "wall s", "all runs s", "output tok/s", "total tok/s", "ours/this", "identical",
            "other busy cores"], rows)
    print()
    if ours:
        print(f"vlmserve's prefix cache hit {ours['prefix_cache_hit_tokens']}/{ours['prefix_cache_queried_tokens']} "
              f"prompt tokens; {ours['images_encoded']} images encoded")
    for peer in peers:
        identical = (f"; identical greedy completions: text-only {peer['identical_text_only']}, with image "
                     f"{peer['identical_with_image']}") if ours else ""
        print(f"transformers, batch {peer['batch_size']}: {len(peer['generate_calls'])} generate() calls (text-only "
              f"and image prompts apart, left-padded){identical}")
    if ours and peers:
        compare = results["comparison"]
        print(f"throughput ratio vlmserve / fastest transformers (batch {compare['batch_size']}): "
              f"{compare['throughput_ratio']:.2f}x")
    if any(system["undisturbed_runs"] < len(system["all_seconds"]) for system in ([ours] if ours else []) + peers):
        print(f"warning: other processes kept more than {BUSY_LIMIT} cores busy during some runs: timings that "
              "share the cores are not comparable; rerun on an idle machine")


def _prompts_line(settings: dict, num_image_prompts: int) -> str:
    if settings["prompts"] == "chat":
        return f"{settings['num_prompts']} chat prompts ({num_image_prompts} with one image of random size)"
    return (f"{settings['num_prompts']} token prompts ({num_image_prompts} with one {settings['image_tiles']}-tile "
            "image)")


def _output_line(settings: dict) -> str:
    if settings["output_lens"]:
        low, high = settings["output_lens"]
        return f"{low}-{high} new tokens per prompt"
    return f"{settings['output_len']} new tokens each"


def _throughput_row(name: str, system: dict, ratio: str, identical: str) -> tuple:
    busy = system["other_busy_cores"]
    return (name, system["seconds"], " ".join(f"{s:.2f}" for s in system["all_seconds"]),
            system["output_tokens_per_s"], system["total_tokens_per_s"], ratio, identical,
            "n/a" if busy is None else f"{busy:.2f}")


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
