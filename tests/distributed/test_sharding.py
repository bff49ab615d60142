"""The tensor-parallel layout: the splits the layers declare match the shapes they give each rank, the ranks'
slices tile each tensor, kv heads are replicated onto the ranks whose q heads read them, and the sharded math
equals the full one."""

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.distributed.sharding import (
    REPLICATED,
    ShardSpec,
    kv_heads_per_rank,
    parameter_specs,
    shard_shape,
    shard_slice,
    shard_slices,
    shard_tensor,
    validate_tp,
)
from vlmserve.families import resolve_model_family
from vlmserve.layers.linear import RowParallelLinear
from vlmserve.models.tiny import tiny_config

SHIPPED = Path(__file__).resolve().parents[2] / "vlmserve" / "models" / "configs"
REAL = ("llama-3.2-11b-vision", "llama-3.2-90b-vision", "llama-4-scout-17b-16e", "llama-4-maverick-17b-128e")
TP_SIZES = (1, 2, 4, 8)

# Small enough to hold real tensors; 8 q heads over 2 kv heads, 8 vision heads, and a vocabulary (99 + 8 embedding
# rows for Mllama) that no tp size > 1 divides.
TINY_MLLAMA = {
    "model_type": "mllama",
    "text_config": {"vocab_size": 99, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 8,
                    "num_key_value_heads": 2, "intermediate_size": 48, "cross_attention_layers": [1]},
    "vision_config": {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 2,
                      "num_global_layers": 1, "attention_heads": 8, "intermediate_size": 64,
                      "intermediate_layers_indices": [0], "vision_output_dim": 64, "max_num_tiles": 2,
                      "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]]},
}
TINY_LLAMA4 = {
    "model_type": "llama4",
    "text_config": {"vocab_size": 99, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
                    "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 32, "intermediate_size_mlp": 48,
                    "num_local_experts": 3, "interleave_moe_layer_step": 2, "attention_chunk_size": 4},
    "vision_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "intermediate_size": 256,
                      "image_size": 28, "patch_size": 7, "vision_output_dim": 24, "projector_input_dim": 24,
                      "projector_output_dim": 24},
    "image_token_index": 90,
}
TINY = {"tiny-mllama": TINY_MLLAMA, "tiny-llama4": TINY_LLAMA4}


def raw_config(name: str) -> dict:
    return TINY[name] if name in TINY else json.loads((SHIPPED / name / "config.json").read_text())


def build(raw: dict, device: str = "meta", tp: TensorParallel = SINGLE):
    family = resolve_model_family(raw["model_type"])
    config = family.parse_config(raw)
    with torch.device(device):
        model = family.model_class(config, tp=tp)
    return config, model


@pytest.fixture(scope="module", params=[*REAL, *TINY])
def meta_model(request):
    raw = raw_config(request.param)
    return raw, *build(raw)


def _dim_ranges(spec: ShardSpec, shape, tp: int) -> list[list[tuple[int, int]]]:
    """Per rank, the [start, stop) ranges along spec.dim its slices cover."""
    return [[(index[spec.dim].start, index[spec.dim].stop) for index in shard_slices(spec, shape, rank, tp)]
            for rank in range(tp)]


@pytest.mark.parametrize("tp", TP_SIZES)
def test_the_ranks_tile_every_parameter(meta_model, tp):
    raw, config, model = meta_model
    validate_tp(raw["model_type"], config, tp)
    kinds = set()
    for name, spec in parameter_specs(model).items():
        param = model.get_parameter(name)
        kinds.add(spec.kind)
        local = shard_shape(spec, param.shape, tp)
        if spec.dim is None:
            assert local == tuple(param.shape), name
            continue
        ranges = _dim_ranges(spec, param.shape, tp)
        size = param.shape[spec.dim]
        if spec.kind == "kv_column" and tp > spec.num_kv_heads:
            head_dim = size // spec.num_kv_heads
            assert all(stop - start == head_dim for (start, stop), in ranges), name
            continue
        covered = sorted(r for rank_ranges in ranges for r in rank_ranges)
        assert covered[0][0] == 0 and covered[-1][1] == size, name
        assert all(a[1] == b[0] for a, b in itertools.pairwise(covered)), f"{name}: gaps or overlaps {covered}"
        held = [sum(stop - start for start, stop in rank_ranges) for rank_ranges in ranges]
        if spec.kind == "vocab":
            assert local[0] == -(-size // tp) >= max(held), name
        else:
            assert set(held) == {local[spec.dim]} and local[spec.dim] * tp == size, name
    expected = {"column", "row", "vocab", "replicated", "kv_column"}
    assert kinds == expected


@pytest.mark.parametrize("tp", [n for n in TP_SIZES if n > 1])
def test_declared_splits_give_the_shapes_the_layers_make_on_a_rank(meta_model, tp):
    """A split a layer forgets to declare reads as replicated: the whole tensor, which a rank's smaller parameter
    cannot take (the loader's shape check refuses it)."""
    raw, _, model = meta_model
    _, rank_model = build(raw, tp=TensorParallel(tp - 1, tp))
    specs = parameter_specs(model)
    assert parameter_specs(rank_model) == specs  # a rank declares the same splits, with the same kv heads
    for name, param in rank_model.named_parameters():
        assert shard_shape(specs[name], model.get_parameter(name).shape, tp) == tuple(param.shape), name


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("tp", TP_SIZES)
def test_concatenated_rank_tensors_rebuild_every_sharded_tensor(name, tp):
    raw = raw_config(name)
    _, model = build(raw, device="cpu")
    specs = parameter_specs(model)
    for param_name, full in model.state_dict().items():
        full = torch.randn(full.shape)
        spec = specs[param_name]
        locals_ = [shard_tensor(spec, full, rank, tp) for rank in range(tp)]
        assert {tuple(t.shape) for t in locals_} == {shard_shape(spec, full.shape, tp)}, param_name
        if spec.dim is None:
            assert all(torch.equal(t, full) for t in locals_), param_name
            continue
        if spec.kind == "kv_column" and tp > spec.num_kv_heads:
            continue  # replicated heads: test_kv_heads_are_replicated_onto_the_ranks_that_read_them
        parts = [torch.cat([t.chunk(spec.num_parts, spec.dim)[p] for t in locals_], spec.dim)
                 for p in range(spec.num_parts)]
        rebuilt = torch.cat(parts, spec.dim)
        if spec.kind == "vocab":
            padding = rebuilt[full.shape[0]:]
            assert torch.equal(padding, torch.zeros_like(padding)), param_name
            rebuilt = rebuilt[:full.shape[0]]
        assert torch.equal(rebuilt, full), param_name


@pytest.mark.parametrize("spec", [ShardSpec(0, "vocab"), ShardSpec(1, "row"), ShardSpec(2, "column", num_parts=2),
                                  ShardSpec(0, "kv_column", num_kv_heads=2), ShardSpec(None, "replicated")])
def test_a_rank_reads_its_shard_straight_from_a_safetensors_file(tmp_path, spec):
    full = torch.randn(10, 8, 16)
    save_file({"w": full}, str(tmp_path / "model.safetensors"))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as shard:
        for rank in range(4):
            assert torch.equal(shard_tensor(spec, shard.get_slice("w"), rank, 4), shard_tensor(spec, full, rank, 4))


def test_vocabulary_padding_of_a_size_no_rank_count_divides():
    spec, full = ShardSpec(0, "vocab"), torch.arange(107.0)[:, None].expand(107, 3)
    locals_ = [shard_tensor(spec, full, rank, 8) for rank in range(8)]
    assert [t.shape[0] for t in locals_] == [14] * 8  # ceil(107 / 8)
    assert torch.equal(locals_[7][:9, 0], torch.arange(98.0, 107.0)) and not locals_[7][9:].any()
    assert shard_slice(spec, (107, 3), 7, 8)[0] == slice(98, 107)
    assert shard_shape(spec, (128264, 4096), 16) == (8017, 4096)  # Mllama's embedding at 16 ranks


@pytest.mark.parametrize("num_heads,num_kv_heads,tp", [(8, 2, 4), (8, 2, 8), (64, 8, 16), (32, 8, 8)])
def test_kv_heads_are_replicated_onto_the_ranks_that_read_them(num_heads, num_kv_heads, tp):
    head_dim = 3
    spec = ShardSpec(0, "kv_column", num_kv_heads=num_kv_heads)
    full = torch.arange(num_kv_heads * head_dim * 2.0).view(num_kv_heads * head_dim, 2)
    group = num_heads // num_kv_heads  # q heads per kv head (GQA)
    for rank in range(tp):
        q_heads = range(rank * num_heads // tp, (rank + 1) * num_heads // tp)
        kv_heads = sorted({h // group for h in q_heads})
        expected = torch.cat([full[h * head_dim:(h + 1) * head_dim] for h in kv_heads])
        assert torch.equal(shard_tensor(spec, full, rank, tp), expected), rank
        assert len(kv_heads) == kv_heads_per_rank(num_kv_heads, tp)


def test_sharded_attention_with_replicated_kv_heads_sums_to_the_full_output():
    """Column q/k/v by heads (kv heads replicated at tp 4 > 2 kv heads), row o_proj: the ranks' partial outputs
    add up (the all-reduce) to the unsharded attention."""
    torch.manual_seed(0)
    hidden, heads, kv_heads, head_dim, tp, tokens = 16, 8, 2, 2, 4, 5
    x = torch.randn(tokens, hidden)
    wq, wk, wv = torch.randn(heads * head_dim, hidden), *torch.randn(2, kv_heads * head_dim, hidden)
    wo = torch.randn(hidden, heads * head_dim)

    def attention(wq, wk, wv, wo, heads, kv_heads):
        q = (x @ wq.T).view(tokens, heads, head_dim).transpose(0, 1)
        k, v = ((x @ w.T).view(tokens, kv_heads, head_dim).transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
                for w in (wk, wv))
        return F.scaled_dot_product_attention(q, k, v).transpose(0, 1).flatten(1) @ wo.T

    declared = parameter_specs(build(TINY_MLLAMA)[1])  # 2 kv heads, as here
    specs = {name: declared[f"language_model.model.layers.0.self_attn.{name}.weight"]
             for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    partials = [attention(*(shard_tensor(specs[n], w, rank, tp) for n, w in
                            zip(("q_proj", "k_proj", "v_proj", "o_proj"), (wq, wk, wv, wo))),
                          heads // tp, kv_heads_per_rank(kv_heads, tp))
                for rank in range(tp)]
    torch.testing.assert_close(sum(partials), attention(wq, wk, wv, wo, heads, kv_heads))


@pytest.mark.parametrize("tp", TP_SIZES)
def test_fused_gate_up_split_keeps_gate_and_up_aligned(tp):
    """Each rank's gate_up_proj holds its 1/N of the gate columns, then the matching 1/N of the up columns; the
    ranks' expert outputs through their down_proj rows sum to the full expert."""
    torch.manual_seed(0)
    experts, hidden, inter = 3, 8, 16
    specs = parameter_specs(build(TINY_LLAMA4)[1])
    prefix = "language_model.model.layers.1.feed_forward.experts."
    gate_up_spec, down_spec = specs[prefix + "gate_up_proj"], specs[prefix + "down_proj"]
    gate_up, down = torch.randn(experts, hidden, 2 * inter), torch.randn(experts, inter, hidden)
    per_rank = inter // tp
    x = torch.randn(4, hidden)

    def expert(gate_up, down, e):
        gate, up = (x @ gate_up[e]).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ down[e]

    for rank in range(tp):
        local = shard_tensor(gate_up_spec, gate_up, rank, tp)
        assert torch.equal(local[..., :per_rank], gate_up[..., rank * per_rank:(rank + 1) * per_rank])
        assert torch.equal(local[..., per_rank:], gate_up[..., inter + rank * per_rank:inter + (rank + 1) * per_rank])
    for e in range(experts):
        partials = [expert(shard_tensor(gate_up_spec, gate_up, r, tp), shard_tensor(down_spec, down, r, tp), e)
                    for r in range(tp)]
        torch.testing.assert_close(sum(partials), expert(gate_up, down, e))
    with pytest.raises(ValueError, match="shard_slices"):
        shard_slice(gate_up_spec, gate_up.shape, 0, 2)


def test_vision_layers_are_sharded_and_stems_replicated():
    specs = parameter_specs(build(raw_config("llama-3.2-11b-vision"))[1])
    kind = {name: specs[name].kind for name in (
        "vision_model.transformer.layers.0.self_attn.q_proj.weight",
        "vision_model.global_transformer.layers.7.mlp.fc2.weight",
        "vision_model.global_transformer.layers.7.mlp.fc2.bias",
        "vision_model.gated_positional_embedding.tile_embedding.weight",
        "multi_modal_projector.weight",
        "language_model.model.layers.3.cross_attn.q_norm.weight",
        "language_model.model.layers.3.cross_attn.k_proj.weight")}
    assert list(kind.values()) == ["column", "row", "replicated", "replicated", "replicated", "replicated",
                                   "kv_column"]
    assert specs["language_model.model.layers.3.cross_attn.v_proj.weight"].num_kv_heads == 8


def test_llama4_experts_are_split_inside_and_the_router_replicated():
    specs = parameter_specs(build(raw_config("llama-4-scout-17b-16e"))[1])
    layer = "language_model.model.layers.0.feed_forward."
    assert specs[layer + "experts.gate_up_proj"] == ShardSpec(2, "column", num_parts=2)
    assert specs[layer + "experts.down_proj"] == ShardSpec(1, "row")
    assert specs[layer + "shared_expert.down_proj.weight"].kind == "row"
    assert specs["language_model.model.layers.0.self_attn.k_proj.weight"].num_kv_heads == 8
    for name in (layer + "router.weight", "vision_model.model.layers.0.self_attn.o_proj.bias",
                 "vision_model.vision_adapter.mlp.fc1.weight", "multi_modal_projector.linear_1.weight"):
        assert specs[name] == REPLICATED, name
    assert specs["vision_model.model.layers.0.self_attn.q_proj.bias"].kind == "column"


def test_invalid_tensor_parallel_sizes_say_why():
    mllama_tiny = resolve_model_family("mllama").parse_config(tiny_config())  # 2 vision heads, 2 kv heads
    validate_tp("mllama", mllama_tiny, 2)
    with pytest.raises(ValueError, match=r"vision attention_heads 2\. Sizes that work: 1, 2$"):
        validate_tp("mllama", mllama_tiny, 4)
    eleven_b, _ = build(raw_config("llama-3.2-11b-vision"))
    with pytest.raises(ValueError, match=r"num_attention_heads 32.*num_key_value_heads 8.*1, 2, 4, 8, 16$"):
        validate_tp("mllama", eleven_b, 3)
    scout, _ = build(raw_config("llama-4-scout-17b-16e"))
    with pytest.raises(ValueError, match=r"does not divide text num_attention_heads 40\. Sizes that work: 1, 2, 4, 8$"):
        validate_tp("llama4", scout, 16)
    with pytest.raises(ValueError, match="whole number >= 1"):
        validate_tp("llama4", scout, 0)


def test_a_parameter_no_parallel_layer_made_is_replicated():
    module = nn.Module()
    module.proj = RowParallelLinear(8, 4, bias=True)
    module.gate = nn.Parameter(torch.zeros(1))
    module.norm = nn.LayerNorm(4)
    assert parameter_specs(module) == {"gate": REPLICATED, "proj.weight": ShardSpec(1, "row"),
                                       "proj.bias": REPLICATED, "norm.weight": REPLICATED, "norm.bias": REPLICATED}


def test_bad_ranks_raise():
    with pytest.raises(ValueError, match="rank 4 is outside 0..3"):
        shard_slices(ShardSpec(0, "column"), (8, 8), 4, 4)
    with pytest.raises(ValueError, match="divisible by 3"):
        shard_slices(ShardSpec(0, "column"), (8, 8), 0, 3)
