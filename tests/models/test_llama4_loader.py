"""Loading Llama 4 checkpoints: transformers' save_pretrained names, the unfused per-expert layout of checkpoints
converted for offline quantization, and dummy weights."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.models.llama4_checkpoints import build_hf_config
from tests.models.test_loader import assert_same_weights  # Llama 4: in-memory names = Hub names
from vlmserve.models.loader import WeightLoadError, load_model

EXPERTS = "language_model.model.layers.1.feed_forward.experts"


@pytest.fixture
def checkpoint_copy(tiny_llama4, tmp_path):
    source = tiny_llama4["interleaved"]
    shutil.copytree(source.path, tmp_path / "model")
    return tmp_path / "model", source.hf_model


def unfuse_experts(path) -> dict[str, torch.Tensor]:
    """Rewrite the checkpoint with every routed expert as [out, in] Linear weights, split over two shards."""
    state = load_file(str(path / "model.safetensors"))
    for fused in [name for name in state if name.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        prefix, weight = fused.rsplit(".", 1)[0], state.pop(fused)
        for e, expert in enumerate(weight):
            if fused.endswith("down_proj"):
                state[f"{prefix}.{e}.down_proj.weight"] = expert.T.contiguous()
            else:
                gate, up = expert.chunk(2, dim=-1)
                state[f"{prefix}.{e}.gate_proj.weight"] = gate.T.contiguous()
                state[f"{prefix}.{e}.up_proj.weight"] = up.T.contiguous()
    (path / "model.safetensors").unlink()
    names = sorted(state)
    weight_map = {name: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, name in enumerate(names)}
    for filename in set(weight_map.values()):
        save_file({n: state[n] for n in names if weight_map[n] == filename}, str(path / filename))
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return state


def rewrite_first_shard(path, edit) -> None:
    shard = path / "model-00001-of-00002.safetensors"
    state = load_file(str(shard))
    edit(state)
    save_file(state, str(shard))


def test_loads_transformers_save_pretrained_names_exactly(checkpoint_copy):
    path, hf_model = checkpoint_copy
    assert_same_weights(load_model(path, dtype="float32").model, hf_model)


def test_unfused_per_expert_layout_fills_the_fused_parameters(checkpoint_copy):
    path, hf_model = checkpoint_copy
    state = unfuse_experts(path)
    assert f"{EXPERTS}.4.up_proj.weight" in state and f"{EXPERTS}.gate_up_proj" not in state
    assert_same_weights(load_model(path, dtype="float32").model, hf_model)


def test_missing_unfused_expert_tensor_is_named(checkpoint_copy):
    path = checkpoint_copy[0]
    missing = f"{EXPERTS}.2.up_proj.weight"
    assert missing in unfuse_experts(path)
    shard = next(p for p in path.glob("model-*.safetensors") if missing in load_file(str(p)))
    save_file({n: t for n, t in load_file(str(shard)).items() if n != missing}, str(shard))
    with pytest.raises(WeightLoadError, match=rf"missing tensor '{missing}'"):
        load_model(path, dtype="float32")


def test_fused_and_unfused_copies_of_one_parameter_are_refused(checkpoint_copy):
    path, hf_model = checkpoint_copy
    unfuse_experts(path)
    fused = hf_model.state_dict()[f"{EXPERTS}.down_proj"].contiguous()
    rewrite_first_shard(path, lambda state: state.update({f"{EXPERTS}.down_proj": fused}))
    with pytest.raises(WeightLoadError, match=rf"fills '{EXPERTS}\.down_proj', which another tensor already"):
        load_model(path, dtype="float32")


def test_expert_outside_the_config_is_named(checkpoint_copy):
    path = checkpoint_copy[0]
    unfuse_experts(path)
    extra = f"{EXPERTS}.5.down_proj.weight"  # the config has experts 0..4
    rewrite_first_shard(path, lambda state: state.update({extra: torch.zeros(48, 24)}))
    with pytest.raises(WeightLoadError, match=rf"'{extra}' names expert 5; the config has 5"):
        load_model(path, dtype="float32")


def test_dummy_weights_need_only_the_config(tmp_path):
    (tmp_path / "config.json").write_text(build_hf_config("interleaved").to_json_string())
    model = load_model(tmp_path, load_format="dummy", dtype="bfloat16").model
    drawn = {name: p for name, p in model.named_parameters() if not ("norm" in name and name.endswith(".bias"))}
    assert all(p.abs().max() > 0 for p in drawn.values())  # norm biases start at 0, as trained ones may
    angles = model.vision_model.rotary_embedding.angles
    assert angles.dtype == torch.float32 and angles[-1].abs().max() == 0  # RoPE angles exact; class token: 0
