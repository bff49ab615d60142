"""`vlmserve plan` against hand arithmetic: parameter counts from the config formulas, bytes per rank, KV blocks
and concurrent 4-tile image requests for the real 11B, 90B and Scout configs on 80 GiB GPUs."""

import argparse
import json
from pathlib import Path

import pytest

from vlmserve.planning import add_plan_parser, format_plan, parse_bytes, plan_memory

SHIPPED = Path(__file__).resolve().parents[1] / "vlmserve" / "models" / "configs"
GIB = 2**30
GPU = 80 * GIB
USABLE = GPU * 9 // 10  # gpu_memory_utilization 0.9
RESERVE = GIB  # activation reserve
BF16 = 2  # bytes
BLOCK = 16
PROMPT, OUTPUT = 128, 256


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def shipped(name: str) -> dict:
    return json.loads((SHIPPED / name / "config.json").read_text())


def mllama_vision_params(tp: int) -> int:
    """The vision tower a rank holds: its 40 layers' q/k/v/o, fc1 and fc2 split N ways, the rest whole."""
    d, inter, patches, tiles, ratios = 1280, 5120, 1601, 4, 9  # 560/14 = 40 -> 40^2 + 1 patches; 8 ratios + pad
    layer_split = 4 * d * d + (d * inter + inter) + inter * d  # q, k, v, o; fc1 weight + bias; fc2 weight
    layer_whole = d + 4 * d  # fc2 bias; two LayerNorms (weight + bias)
    stems = (d * 3 * 14 * 14 + d  # patch conv (no bias), class embedding
             + patches * d + ratios * tiles * patches * d + 1  # gated positional: embedding, tile table, gate
             + 2 * (ratios * tiles * d + 1)  # pre/post tile embeddings + gates
             + 4 * d)  # layernorm_pre/post
    return 40 * (layer_split // tp + layer_whole) + 8 * 2 + stems  # 32 local + 8 global layers; 2 gates a global


def mllama_text_params(h: int, layers: int, cross: int, heads: int, kv: int, inter: int, tp: int) -> int:
    """The text decoder a rank holds. Every layer: q, o (h x h) and k, v (h x kv*128) — GQA, so k/v are
    kv/heads the size of q — plus a SwiGLU MLP (3 h inter) and two RMSNorms; cross layers add q/k norms (128 each)
    and two gates. Embedding 128264 rows, LM head 128256, split ceil(rows / N) each."""
    head_dim, vocab = 128, 128256
    kv_rank = max(kv // tp, 1)
    attention = 2 * h * heads * head_dim // tp + 2 * h * kv_rank * head_dim
    mlp = 3 * h * inter // tp
    per_layer = attention + mlp + 2 * h
    return layers * per_layer + cross * (2 * head_dim + 2) + (ceil_div(vocab + 8, tp) + ceil_div(vocab, tp)) * h + h


MLLAMA = {  # name: (hidden, layers, cross layers, heads, kv heads, intermediate)
    "llama-3.2-11b-vision": (4096, 40, 8, 32, 8, 14336),
    "llama-3.2-90b-vision": (8192, 100, 20, 64, 8, 28672),
}


def mllama_hand(name: str, tp: int) -> dict:
    h, layers, cross, heads, kv, inter = MLLAMA[name]
    projector = 7680 * h + h
    rank_params = mllama_text_params(h, layers, cross, heads, kv, inter, tp) + mllama_vision_params(tp) + projector
    kv_bytes_per_token = (layers - cross) * 2 * max(kv // tp, 1) * 128 * BF16  # self-attention layers, K and V
    per_block = kv_bytes_per_token * BLOCK
    # An image's cross-attention K/V: every cross layer, K and V, 4 tiles x 1601 tokens, in blocks of the pool
    # (the same kv heads per rank on both sides of the ratio).
    image_blocks = ceil_div(cross * 2 * 4 * 1601, (layers - cross) * 2 * BLOCK)
    return {"total": (mllama_text_params(h, layers, cross, heads, kv, inter, 1) + mllama_vision_params(1)
                      + projector),
            "rank_bytes": rank_params * BF16, "per_block": per_block,
            "per_request": ceil_div(PROMPT + OUTPUT, BLOCK) + image_blocks}


def scout_hand(tp: int) -> dict:
    """Scout: 48 MoE layers (16 experts of 8192 + a shared expert), 40 heads / 8 kv of 128, vocab 202048; vision
    1408 wide, 34 layers with biases; adapter and projector whole."""
    h, layers, heads, kv, inter, experts, vocab = 5120, 48, 40, 8, 8192, 16, 202048
    kv_rank = max(kv // tp, 1)
    attention = 2 * h * heads * 128 // tp + 2 * h * kv_rank * 128
    moe = experts * h + (experts * h * 2 * inter + experts * inter * h) // tp + 3 * h * inter // tp  # router whole
    text = layers * (attention + moe + 2 * h) + 2 * ceil_div(vocab, tp) * h + h
    d, v_inter = 1408, 5632
    layer_split = 4 * d * d + 3 * d + (d * v_inter + v_inter) + v_inter * d  # q/k/v/o, q/k/v biases, fc1, fc2
    layer_whole = d + d + 4 * d  # o and fc2 biases, two LayerNorms
    vision = 34 * (layer_split // tp + layer_whole) + 588 * d + d + 577 * d + 4 * d + 4096 * 5632 + 4096 * 4096
    image_tokens = 1 + 4 * 144 + 2 * (2 - 1) + 2 + 1 + 144 + 1  # model_spec G.5, a 2x2 grid + the global tile
    assert image_tokens == 727
    return {"rank_bytes": (text + vision + 4096 * h) * BF16, "per_block": layers * 2 * kv_rank * 128 * BF16 * BLOCK,
            "per_request": ceil_div(PROMPT + image_tokens + OUTPUT, BLOCK)}


def check_against_hand(plan, hand: dict) -> None:
    assert plan.weight_bytes == hand["rank_bytes"]
    assert plan.kv_bytes_per_block == hand["per_block"]
    budget = USABLE - hand["rank_bytes"] - RESERVE
    assert plan.kv_budget_bytes == budget
    blocks = budget // hand["per_block"]
    assert plan.num_kv_blocks == blocks and plan.num_kv_tokens == blocks * BLOCK
    assert plan.blocks_per_request == hand["per_request"]
    assert plan.max_concurrent_requests == blocks // hand["per_request"]


@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])  # 16: 8 kv heads replicated, vocabulary padded
@pytest.mark.parametrize("name", list(MLLAMA))
def test_mllama_plans_match_hand_arithmetic(name, tp):
    plan = plan_memory(shipped(name), tp, GPU)
    hand = mllama_hand(name, tp)
    assert plan.total_params == hand["total"] == {"llama-3.2-11b-vision": 10_670_220_835,
                                                  "llama-3.2-90b-vision": 88_593_355_323}[name]
    if hand["rank_bytes"] + RESERVE >= USABLE:
        assert (name, tp) in {("llama-3.2-90b-vision", 1), ("llama-3.2-90b-vision", 2)}
        assert not plan.fits and plan.num_kv_blocks == 0
        return
    assert plan.fits
    check_against_hand(plan, hand)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_scout_plans_match_hand_arithmetic(tp):
    plan = plan_memory(shipped("llama-4-scout-17b-16e"), tp, GPU)
    assert plan.total_params == 108_641_793_536
    hand = scout_hand(tp)
    assert plan.weight_bytes == hand["rank_bytes"]
    assert plan.fits == (tp >= 4)  # 202 GiB of weights at tp 1, 101 GiB at tp 2
    if plan.fits:
        check_against_hand(plan, hand)


def test_the_90b_on_one_80_gib_gpu_does_not_fit_and_says_so():
    plans = [plan_memory(shipped("llama-3.2-90b-vision"), tp, GPU, label="90B") for tp in (1, 8)]
    text = format_plan(*plans)
    assert "tp 1: does not fit: 165.02 GiB of weights" in text
    assert "tp 8: fits" in text
    row = next(line for line in text.splitlines() if line.startswith("max concurrent 4-tile image requests"))
    assert row.split()[-2:] == ["-", f"{plans[1].max_concurrent_requests:,}"]


def test_the_cli_prints_one_column_per_tp_size(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(shipped("llama-3.2-11b-vision")))
    parser = argparse.ArgumentParser()
    add_plan_parser(parser.add_subparsers())
    for model in ("llama-3.2-11b-vision", str(tmp_path), str(tmp_path / "config.json")):
        args = parser.parse_args(["plan", "--model", model, "--tp", "1", "8", "--gpu-mem", "80GiB"])
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert "tp 1" in out and "tp 8" in out and "activation" in out
        assert f"{plan_memory(shipped('llama-3.2-11b-vision'), 8, GPU).max_concurrent_requests:,}" in out


def test_invalid_settings_raise():
    config = shipped("llama-3.2-11b-vision")
    with pytest.raises(ValueError, match="tensor parallel size 3"):
        plan_memory(config, 3, GPU)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        plan_memory(config, 1, GPU, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="exceeds max_model_len 300"):
        plan_memory(config, 1, GPU, max_model_len=300)
    with pytest.raises(ValueError, match="image_tiles must be 1..4"):
        plan_memory(config, 1, GPU, image_tiles=5)


@pytest.mark.parametrize("text,expected", [
    ("80GiB", 80 * GIB), ("80GB", 80 * 10**9), ("141 GiB", 141 * GIB), ("24000MiB", 24000 * 2**20),
    ("1.5TiB", 3 * 2**39), ("80gib", 80 * GIB), ("4096", 4096), (" 512 KiB ", 512 * 1024),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["80XB", "", "GiB", "-1GiB", "80 Gi B", "1e3GB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="cannot read"):
        parse_bytes(text)
