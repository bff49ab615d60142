"""Loading checkpoints: Hub and transformers 5.x names, shards, dtypes, dummy weights, and every error."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmserve.models.loader import WeightLoadError, load_model
from vlmserve.models.mllama import MllamaForConditionalGeneration
from vlmserve.models.config_common import ConfigError
from vlmserve.models.mllama_config import parse_mllama_config

REFERENCE_CONFIGS = Path(__file__).parents[2] / "vlmserve" / "models" / "configs"


@pytest.fixture
def checkpoint_copy(tiny_checkpoints, tmp_path):
    source = tiny_checkpoints["gqa2-2tiles"]
    shutil.copytree(source.path, tmp_path / "model")
    return tmp_path / "model", source.hf_model


def assert_same_weights(model, hf_model):
    ours = model.state_dict()
    for name, value in hf_model.state_dict().items():
        hub = name.replace("model.language_model.", "language_model.model.").replace(
            "model.vision_model.", "vision_model.").replace("model.multi_modal_projector.", "multi_modal_projector.")
        hub = "language_model.lm_head.weight" if hub == "lm_head.weight" else hub
        torch.testing.assert_close(ours[hub].float(), value.float(), rtol=0, atol=0)


def test_loads_hub_names_exactly(checkpoint_copy):
    path, hf_model = checkpoint_copy
    loaded = load_model(path, dtype="float32")
    assert loaded.dtype == torch.float32
    assert_same_weights(loaded.model, hf_model)


def test_loads_sharded_checkpoint_with_transformers5_names(checkpoint_copy, tmp_path):
    path, hf_model = checkpoint_copy
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(path / "config.json", sharded)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}  # in-memory 5.x names
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for filename, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(sharded / filename))
        weight_map.update({k: filename for k in keys})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_weights(load_model(sharded, dtype="float32").model, hf_model)


@pytest.mark.parametrize("dtype, expected", [("bfloat16", torch.bfloat16), ("float16", torch.float16),
                                             ("auto", torch.float32)])
def test_dtype(checkpoint_copy, dtype, expected):
    model = load_model(checkpoint_copy[0], dtype=dtype).model
    assert {p.dtype for p in model.parameters()} == {expected}
    rotary = model.language_model.model.layers[0].self_attn.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32  # RoPE frequencies stay exact whatever the weights' dtype


def test_dummy_load_needs_only_config(checkpoint_copy, tmp_path):
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(checkpoint_copy[0] / "config.json", only_config)
    model = load_model(only_config, load_format="dummy", dtype="float32").model
    drawn = {name: p for name, p in model.named_parameters() if not ("norm" in name and name.endswith(".bias"))}
    assert all(p.abs().max() > 0 for p in drawn.values())  # norm biases start at 0, as trained ones may


def test_real_configs_build_with_published_parameter_counts():
    for name, expected in (("llama-3.2-11b-vision", 10.67e9), ("llama-3.2-90b-vision", 88.59e9)):
        with open(REFERENCE_CONFIGS / name / "config.json") as f:
            config = parse_mllama_config(json.load(f))
        with torch.device("meta"):
            model = MllamaForConditionalGeneration(config)
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - expected) / expected < 1e-3


def test_unknown_model_type_lists_supported(checkpoint_copy):
    path = checkpoint_copy[0]
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llava"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'llava'.*supported: llama4, mllama"):
        load_model(path)


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(tmp_path)


def test_missing_shard_is_named(checkpoint_copy):
    path = checkpoint_copy[0]
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightLoadError, match="model-00002-of-00002.safetensors"):
        load_model(path)


def test_truncated_shard_is_named(checkpoint_copy):
    path = checkpoint_copy[0]
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightLoadError, match="model.safetensors"):
        load_model(path)


def test_missing_tensor_is_named(checkpoint_copy):
    path = checkpoint_copy[0]
    state = load_file(str(path / "model.safetensors"))
    del state["language_model.model.layers.2.cross_attn.k_norm.weight"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match=r"layers\.2\.cross_attn\.k_norm\.weight"):
        load_model(path)


def test_wrong_shape_is_named(checkpoint_copy):
    path = checkpoint_copy[0]
    state = load_file(str(path / "model.safetensors"))
    state["multi_modal_projector.weight"] = torch.zeros(3, 3)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match=r"multi_modal_projector\.weight.*\(3, 3\)"):
        load_model(path)


def test_unexpected_tensor_is_named(checkpoint_copy):
    path = checkpoint_copy[0]
    state = load_file(str(path / "model.safetensors"))
    state["vision_model.extra.weight"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match=r"vision_model\.extra\.weight"):
        load_model(path)


def test_unsupported_dtype_and_load_format(checkpoint_copy):
    with pytest.raises(ValueError, match="dtype 'int8'"):
        load_model(checkpoint_copy[0], dtype="int8")
    with pytest.raises(ValueError, match="load_format 'pt'"):
        load_model(checkpoint_copy[0], load_format="pt")
