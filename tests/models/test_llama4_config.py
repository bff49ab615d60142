"""Parsing Llama 4 config.json files: the shipped Scout and Maverick configs, both spellings of the Hub and
transformers 5.x, the derived layer plans (checked against transformers' own), and every validation error."""

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import Llama4TextConfig as HFTextConfig

from tests.models.llama4_checkpoints import build_hf_config
from vlmserve.families import resolve_model_family
from vlmserve.layers.rope_config import RopeConfig
from vlmserve.models.config_common import ConfigError
from vlmserve.models.llama4_config import parse_llama4_config

SHIPPED = Path(__file__).parents[2] / "vlmserve" / "models" / "configs"


def shipped(name: str) -> dict:
    return json.loads((SHIPPED / name / "config.json").read_text())


@pytest.fixture
def tiny_raw() -> dict:
    return build_hf_config("interleaved").to_dict()


def with_changes(raw: dict, section: str | None, **changes) -> dict:
    raw = copy.deepcopy(raw)
    (raw[section] if section else raw).update(changes)
    return raw


def test_scout_config():
    config = parse_llama4_config(shipped("llama-4-scout-17b-16e"))
    text, vision = config.text, config.vision
    assert text.moe_layers == tuple(range(48)) and text.num_local_experts == 16 and text.num_experts_per_tok == 1
    assert [i for i in range(48) if not text.uses_rope(i)] == list(range(3, 48, 4))
    assert text.use_qk_norm and text.attn_temperature_tuning and text.attention_chunk_size == 8192
    assert text.rope == RopeConfig(theta=500000.0, rope_type="llama3", factor=16.0, low_freq_factor=1.0,
                                   high_freq_factor=1.0, original_max_position_embeddings=8192)
    assert text.self_attention_layers == list(range(48)) and text.cross_attention_layers == []
    assert text.eos_token_ids == (200001, 200007, 200008) and text.bos_token_id == 200000
    assert (config.image_token_index, config.boi_token_index, config.eoi_token_index) == (200092, 200080, 200081)
    assert (vision.tokens_per_tile, vision.num_patches, vision.head_dim) == (144, 577, 88)
    assert config.dtype == "bfloat16"


def test_maverick_config():
    text = parse_llama4_config(shipped("llama-4-maverick-17b-128e")).text
    assert text.moe_layers == tuple(range(1, 48, 2)) and text.num_local_experts == 128
    assert text.rope == RopeConfig(theta=500000.0) and not text.use_qk_norm
    assert text.intermediate_size_mlp == 16384


@pytest.mark.parametrize("name,expected", [("llama-4-scout-17b-16e", 108.6e9), ("llama-4-maverick-17b-128e", 401.6e9)])
def test_shipped_configs_build_with_published_parameter_counts(name, expected):
    raw = shipped(name)
    family = resolve_model_family(raw["model_type"])
    with torch.device("meta"):
        model = family.model_class(family.parse_config(raw))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 5e-4


def test_hub_spelling_equals_transformers5_spelling():
    raw = shipped("llama-4-scout-17b-16e")
    hub = copy.deepcopy(raw)
    params = hub["text_config"].pop("rope_parameters")
    hub["text_config"]["rope_theta"] = params.pop("rope_theta")
    hub["text_config"]["rope_scaling"] = params
    hub["text_config"]["attn_temperature_tuning"] = 4  # as on the Hub
    hub["vision_config"]["rope_theta"] = hub["vision_config"].pop("rope_parameters")["rope_theta"]
    assert parse_llama4_config(hub) == parse_llama4_config(raw)


@pytest.mark.parametrize("value,expected", [(4, True), (1, True), (0, False), (False, False)])
def test_attn_temperature_tuning_int_is_a_flag(tiny_raw, value, expected):
    raw = with_changes(tiny_raw, "text_config", attn_temperature_tuning=value)
    assert parse_llama4_config(raw).text.attn_temperature_tuning is expected


@pytest.mark.parametrize("text", [
    dict(num_hidden_layers=8, no_rope_layers=None, moe_layers=None, interleave_moe_layer_step=2),
    dict(num_hidden_layers=6, no_rope_layers=[], no_rope_layer_interval=3, moe_layers=None),
    dict(num_hidden_layers=4, no_rope_layers=[1, 0, 0, 1], moe_layers=[0, 2]),
])
def test_derived_layer_plans_match_transformers(tiny_raw, text):
    raw = with_changes(tiny_raw, "text_config", **text)
    ours = parse_llama4_config(raw).text
    hf_raw = {k: v for k, v in raw["text_config"].items() if k not in ("layer_types", "model_type")}
    theirs = HFTextConfig(**hf_raw)
    assert list(ours.moe_layers) == theirs.moe_layers
    assert list(ours.no_rope_layers) == theirs.no_rope_layers[: ours.num_hidden_layers]


def test_dtype_spellings(tiny_raw):
    raw = {k: v for k, v in tiny_raw.items() if k != "dtype"}
    assert parse_llama4_config({**raw, "torch_dtype": "bfloat16"}).dtype == "bfloat16"
    assert parse_llama4_config({**raw, "dtype": "float16", "torch_dtype": "bfloat16"}).dtype == "float16"
    assert parse_llama4_config(raw).dtype is None


@pytest.mark.parametrize("section,changes,message", [
    ("text_config", {"hidden_size": None}, r"'text_config\.hidden_size' must be an integer"),
    ("text_config", {"num_key_value_heads": 3}, r"'text_config\.num_key_value_heads' \(3\) must divide"),
    ("text_config", {"head_dim": 7}, r"'text_config\.head_dim' must be a positive even"),
    ("text_config", {"num_experts_per_tok": 9}, r"'text_config\.num_experts_per_tok' \(9\) exceeds"),
    ("text_config", {"moe_layers": [1, 4]}, r"'text_config\.moe_layers' names layer \[4\]"),
    ("text_config", {"no_rope_layers": [1, 0]}, r"'text_config\.no_rope_layers' must hold a 0 or 1 for each of"),
    ("text_config", {"attn_temperature_tuning": "yes"}, r"'text_config\.attn_temperature_tuning' must be true"),
    ("text_config", {"hidden_act": "relu"}, r"'text_config\.hidden_act' 'relu' is not one of"),
    ("text_config", {"attention_chunk_size": 0}, r"'text_config\.attention_chunk_size' must be an integer >= 1"),
    ("text_config", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
     r"missing required key 'text_config\.rope_parameters\.low_freq_factor'"),
    ("text_config", {"rope_parameters": {"rope_type": "yarn"}}, r"unsupported rope_type 'yarn'"),
    ("vision_config", {"intermediate_size": 64}, r"'vision_config\.intermediate_size' must equal the pixel-shuffled"),
    ("vision_config", {"projector_output_dim": 48}, r"'vision_config\.vision_output_dim' must equal"),
    ("vision_config", {"num_attention_heads": 16}, r"'vision_config\.num_attention_heads' must split"),
    ("vision_config", {"pixel_shuffle_ratio": 0.3}, r"'vision_config\.pixel_shuffle_ratio' must be 1/n"),
    (None, {"image_token_index": 300}, r"'image_token_index' \(300\) must be a row of the 300-token"),
    (None, {"vision_config": None}, r"'vision_config' is missing"),
])
def test_invalid_configs_name_the_key(tiny_raw, section, changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_llama4_config(with_changes(tiny_raw, section, **changes))


def test_missing_required_key_is_named(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    del raw["vision_config"]["patch_size"]
    with pytest.raises(ConfigError, match=r"missing required key 'vision_config\.patch_size'"):
        parse_llama4_config(raw)
