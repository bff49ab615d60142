"""`vlmserve bench latency | throughput` on the shipped 11B config shrunk to toy size by --hf-overrides (dummy
weights, float32, CPU), beside transformers; the error paths; and the decode-step byte count of the real 11B."""

import json
import sys

import pytest
import torch

from vlmserve.bench.measure import OtherLoad, fastest_undisturbed
from vlmserve.bench.model_source import (
    SHIPPED_CONFIGS,
    deep_merge,
    resolve_model,
    shipped_configs,
)
from vlmserve.bench.roofline import decode_step_bytes, text_decoder_weight_bytes
from vlmserve.bench.synthetic import synthetic_chats
from vlmserve.bench.throughput import ThroughputSettings
from vlmserve.cli import main
from vlmserve.families import resolve_model_family

TOY_11B = {
    "text_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "intermediate_size": 128, "cross_attention_layers": [1]},
    "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_global_layers": 1, "attention_heads": 2,
                      "intermediate_size": 64, "intermediate_layers_indices": [1], "vision_output_dim": 64,
                      "image_size": 56},
}
TOY = ["--model", "llama-3.2-11b-vision", "--load-format", "dummy", "--dtype", "float32", "--device", "cpu",
       "--hf-overrides", json.dumps(TOY_11B)]


def test_latency_reports_every_figure_beside_transformers(tmp_path, capsys):
    out = tmp_path / "latency.json"
    code = main(["bench", "latency", *TOY, "--batch-sizes", "1", "2", "--output-len", "5", "--warmup", "1",
                 "--iters", "2", "--compare-hf", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "TTFT ms" in table and "decode tok/s, batch 2" in table and "roofline" in table
    results = json.loads(out.read_text())
    assert results["model"]["hf_overrides"] == TOY_11B and results["model"]["transformers_compat"] is True
    assert results["settings"]["timed_decode_steps"] == 3
    assert results["copy_bandwidth"]["bytes_per_s"] > 0
    ours, theirs = results["vlmserve"], results["transformers"]
    for system in (ours, theirs):
        assert system["ttft_ms"] > 0 and len(system["ttft_ms_all"]) == 2
        assert [d["batch_size"] for d in system["decode"]] == [1, 2]
        for entry in system["decode"]:
            assert entry["tokens_per_s"] > 0 and entry["step_ms"] > 0
            assert 0 < entry["fraction"] <= 1 and entry["roofline_ms"] > 0
            step = entry["bytes_per_step"]
            assert step["total"] == step["weights"] + step["kv_cache"] + step["vision_kv"]
            # 1 cross layer x K,V x 2 heads x 16 dims x 4 bytes x 4 tiles x 17 vision tokens, per request
            assert step["vision_kv"] == entry["batch_size"] * 2 * 2 * 16 * 4 * 4 * 17
            assert len(entry["tokens"]) == entry["batch_size"] and len(entry["tokens"][0]) == 5
    assert ours["peak_memory_bytes"] > 0 and ours["peak_memory_kind"] == "process peak RSS"
    comparison = results["comparison"]
    assert comparison["ttft_speedup"] > 0 and set(comparison["decode_speedup"]) == {"1", "2"}
    assert comparison["greedy_tokens_identical"] is True  # the tiny float32 model decodes alike in both


def test_throughput_beside_transformers(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    code = main(["bench", "throughput", *TOY, "--num-prompts", "4", "--input-len", "20", "--output-len", "4",
                 "--image-fraction", "0.5", "--hf-batch-size", "2", "--compare-hf", "--json", str(out)])
    assert code == 0
    assert "output tok/s" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["num_image_prompts"] == 2
    ours, [theirs] = results["vlmserve"], results["transformers"]
    for system in (ours, theirs):
        assert system["output_tokens"] == 16 and system["prompt_tokens"] == 80
        assert system["output_tokens_per_s"] > 0 and system["total_tokens_per_s"] > system["output_tokens_per_s"]
        assert len(system["all_seconds"]) == 1
    assert ours["prompt_len_range"] == [20, 20] and ours["images_encoded"] == 2
    assert theirs["batch_size"] == 2 and theirs["generate_calls"] == [2, 2]  # text-only and image prompts apart
    assert (theirs["identical_text_only"], theirs["identical_with_image"]) == (2, 2)
    assert results["comparison"]["identical_completions"] == 4 and results["comparison"]["throughput_ratio"] > 0


def test_throughput_of_chats_of_mixed_lengths_beside_two_transformers_batch_sizes(tmp_path, capsys):
    """The workload of the 154M comparison in benchmarks/README.md, shrunk: chat requests, each wanting its own
    number of tokens, two timed runs per system, transformers at two batch sizes."""
    out = tmp_path / "throughput.json"
    code = main(["bench", "throughput", *TOY, "--prompts", "chat", "--num-prompts", "5", "--output-lens", "2", "6",
                 "--repeat", "2", "--hf-batch-size", "1", "4", "--compare-hf", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "5 chat prompts (2 with one image of random size)" in table and "transformers, batch 4" in table
    results = json.loads(out.read_text())
    lengths = ThroughputSettings(num_prompts=5, output_lens=(2, 6)).output_lengths()
    ours, theirs = results["vlmserve"], results["transformers"]
    assert ours["output_tokens"] == sum(lengths) and 2 <= min(lengths) <= max(lengths) <= 6
    assert [entry["batch_size"] for entry in theirs] == [1, 4]
    for system in (ours, *theirs):
        assert len(system["all_seconds"]) == 2 and system["seconds"] in system["all_seconds"]
        assert system["output_tokens"] == sum(lengths)
    assert ours["images_encoded"] == 2 and ours["prefix_cache_queried_tokens"] >= ours["prompt_tokens"] - 5
    assert theirs[0]["generate_calls"] == [1] * 5
    assert all(entry["identical_completions"] == 5 for entry in theirs)
    assert results["host"]["torch_threads"] >= 1


def test_throughput_of_transformers_alone(tmp_path, capsys):
    """--hf-only (the old script's --only hf): transformers is timed, our engine only lends it weights and inputs."""
    out = tmp_path / "throughput.json"
    code = main(["bench", "throughput", *TOY, "--num-prompts", "3", "--input-len", "20", "--output-len", "3",
                 "--hf-batch-size", "2", "--hf-only", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "transformers, batch 2" in table and "vlmserve's prefix cache" not in table
    results = json.loads(out.read_text())
    assert "vlmserve" not in results and "comparison" not in results
    assert results["model"]["transformers_compat"] is True
    [theirs] = results["transformers"]
    assert theirs["output_tokens"] == 9 and theirs["prompt_len_range"] == [20, 20] and theirs["seconds"] > 0
    assert "identical_completions" not in theirs


def test_chat_prompts_are_fixed_by_the_seed():
    chats = synthetic_chats(6, seed=0)
    again = synthetic_chats(6, seed=0)
    assert [c[0]["content"][-1]["text"] for c in chats] == [c[0]["content"][-1]["text"] for c in again]
    assert [len(c[0]["content"]) for c in chats] == [1, 2, 1, 1, 2, 1]  # one image in three, from the second
    assert chats[1][0]["content"][0]["type"] == "image"
    assert synthetic_chats(6, seed=1)[0] != chats[0]


def test_the_fastest_undisturbed_run_is_reported():
    runs = [{"seconds": 1.0, "other_busy_cores": 0.9}, {"seconds": 2.0, "other_busy_cores": 0.0},
            {"seconds": 3.0, "other_busy_cores": None}]
    assert fastest_undisturbed(runs)["seconds"] == 2.0
    assert fastest_undisturbed(runs[:1])["seconds"] == 1.0  # every run disturbed: the fastest
    with OtherLoad() as load:
        sum(range(10_000))
    assert load.value is None or load.value >= 0


@pytest.mark.parametrize("options, message", [
    (["--output-lens", "5", "2"], "--output-lens MIN MAX needs 1 <= MIN <= MAX"),
    (["--repeat", "0"], "must be >= 1"),
    (["--hf-batch-size", "4", "0"], "must be >= 1"),
])
def test_bad_throughput_settings_are_clear_errors(options, message, capsys):
    assert main(["bench", "throughput", *TOY, *options]) == 2
    assert message in capsys.readouterr().err


def test_config_without_weights_needs_dummy(capsys):
    assert main(["bench", "latency", "--model", "llama-3.2-11b-vision"]) == 2
    error = capsys.readouterr().err
    assert "without weights" in error and "--load-format dummy" in error


def test_unknown_model_lists_the_shipped_configs(capsys):
    assert main(["bench", "throughput", "--model", "llama-9-vision", "--load-format", "dummy"]) == 2
    error = capsys.readouterr().err
    assert "llama-9-vision" in error
    assert all(name in error for name in ["llama-3.2-11b-vision", "llama-3.2-90b-vision"])
    assert set(shipped_configs()) >= {"llama-3.2-11b-vision", "llama-3.2-90b-vision"}


def test_compare_hf_without_transformers_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert main(["bench", "latency", *TOY, "--compare-hf"]) == 2
    assert "--compare-hf needs transformers" in capsys.readouterr().err


def test_bad_overrides_are_a_clear_error(capsys):
    assert main(["bench", "latency", "--model", "llama-3.2-11b-vision", "--load-format", "dummy",
                 "--hf-overrides", "[1]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_overrides_merge_deeply_and_keep_the_source_files(tmp_path):
    assert deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 0}, {"a": {"c": [3]}, "e": 1}) == {
        "a": {"b": 1, "c": [3]}, "d": 0, "e": 1}
    source_dir = tmp_path / "model"
    source_dir.mkdir()
    (source_dir / "config.json").write_text((SHIPPED_CONFIGS / "llama-3.2-11b-vision" / "config.json").read_text())
    (source_dir / "model.safetensors").write_bytes(b"")
    with resolve_model(str(source_dir), hf_overrides={"text_config": {"num_hidden_layers": 4}}) as source:
        written = json.loads((source.path / "config.json").read_text())
        assert written["text_config"]["num_hidden_layers"] == 4 and written["text_config"]["hidden_size"] == 4096
        assert (source.path / "model.safetensors").resolve() == (source_dir / "model.safetensors").resolve()
        assert source.has_weights
    assert not source.path.exists()
    lone = tmp_path / "my-config.json"
    lone.write_text(json.dumps({"model_type": "mllama"}))
    with resolve_model(str(lone), load_format="dummy") as source:
        assert (source.path / "config.json").is_file() and not source.has_weights


def test_decode_step_bytes_of_the_real_11b():
    raw = json.loads((SHIPPED_CONFIGS / "llama-3.2-11b-vision" / "config.json").read_text())
    family = resolve_model_family(raw["model_type"])
    config = family.parse_config(raw)
    with torch.device("meta"):
        model = family.model_class(config).to(torch.bfloat16)
    weights = text_decoder_weight_bytes(model)

    hidden, inter, heads, kv_heads, vocab = 4096, 14336, 32, 8, 128256
    head_dim = hidden // heads
    projections = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    layer = projections + 3 * hidden * inter + 2 * hidden  # + MLP, two RMSNorms
    cross_extra = 2 * head_dim + 2  # q_norm, k_norm, the two tanh gates
    params = 40 * layer + 8 * cross_extra + hidden + vocab * hidden  # + final norm, LM head
    assert weights == 2 * params
    assert weights == pytest.approx(18.5e9, rel=0.01)

    batch, context, tiles = 32, 49, 4
    step = decode_step_bytes(config, weights, 2, [context] * batch, [tiles] * batch)
    per_token = 2 * kv_heads * head_dim * 2  # K and V, bf16, one layer
    assert step.kv_cache == 32 * per_token * context * batch
    assert step.vision_kv == 8 * per_token * tiles * 1601 * batch  # ~210 MB per 4-tile image
    assert step.vision_kv / batch == pytest.approx(210e6, rel=0.01)
    assert step.total == pytest.approx(25.2e9, rel=0.01)
