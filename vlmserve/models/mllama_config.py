"""Typed Mllama (Llama 3.2 Vision) architecture config, parsed once from a Hugging Face `config.json`.

Accepts both the Hub spelling (`rope_scaling` + `rope_theta`, `torch_dtype`) and the transformers 5.x
spelling (`rope_parameters`, `dtype`).
"""

from dataclasses import dataclass, field
from typing import Any

from vlmserve.layers.rope_config import RopeConfig
from vlmserve.models.config_common import (
    ConfigError,
    config_dtype,
    parse_rope_config,
    token_ids,
)

DEFAULT_ASPECT_RATIOS = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]


@dataclass(frozen=True)
class MllamaTextConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    cross_attention_layers: tuple[int, ...]
    rope: RopeConfig
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    bos_token_id: int = 128000
    eos_token_ids: tuple[int, ...] = (128001,)
    pad_token_id: int | None = 128004

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def self_attention_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if i not in self.cross_attention_layers]


@dataclass(frozen=True)
class MllamaVisionConfig:
    hidden_size: int = 1280
    num_hidden_layers: int = 32
    num_global_layers: int = 8
    attention_heads: int = 16
    intermediate_size: int = 5120
    vision_output_dim: int = 7680
    image_size: int = 560
    patch_size: int = 14
    num_channels: int = 3
    norm_eps: float = 1e-5
    max_num_tiles: int = 4
    hidden_act: str = "gelu"
    intermediate_layers_indices: tuple[int, ...] = (3, 7, 15, 23, 30)
    supported_aspect_ratios: tuple[tuple[int, int], ...] = field(
        default_factory=lambda: tuple(tuple(r) for r in DEFAULT_ASPECT_RATIOS)
    )

    @property
    def num_patches(self) -> int:
        """Tokens per tile: the patch grid plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def max_aspect_ratio_id(self) -> int:
        return len(self.supported_aspect_ratios)


@dataclass(frozen=True)
class MllamaConfig:
    text: MllamaTextConfig
    vision: MllamaVisionConfig
    image_token_index: int = 128256
    dtype: str | None = None
    model_type: str = "mllama"

    def tp_split_sizes(self) -> dict[str, int]:
        """The sizes tensor-parallel ranks split into equal shares, which their number must divide (kv heads,
        which may be replicated instead, are vlmserve/distributed/sharding.py's own check)."""
        return {"text num_attention_heads": self.text.num_attention_heads,
                "text intermediate_size": self.text.intermediate_size,
                "vision attention_heads": self.vision.attention_heads,
                "vision intermediate_size": self.vision.intermediate_size}


def parse_text_config(text: dict[str, Any]) -> MllamaTextConfig:
    return MllamaTextConfig(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
        intermediate_size=text["intermediate_size"],
        cross_attention_layers=tuple(text.get("cross_attention_layers", ())),
        rope=parse_rope_config(text),
        hidden_act=text.get("hidden_act", "silu"),
        rms_norm_eps=text.get("rms_norm_eps", 1e-5),
        max_position_embeddings=text.get("max_position_embeddings", 131072),
        bos_token_id=text.get("bos_token_id", 128000),
        eos_token_ids=token_ids(text.get("eos_token_id", 128001)),
        pad_token_id=text.get("pad_token_id"),
    )


def parse_vision_config(vision: dict[str, Any]) -> MllamaVisionConfig:
    known = MllamaVisionConfig.__dataclass_fields__
    values = {k: v for k, v in vision.items() if k in known}
    if "attention_heads" not in values and "num_attention_heads" in vision:
        values["attention_heads"] = vision["num_attention_heads"]
    for key in ("intermediate_layers_indices",):
        if key in values:
            values[key] = tuple(values[key])
    if "supported_aspect_ratios" in values:
        values["supported_aspect_ratios"] = tuple(tuple(r) for r in values["supported_aspect_ratios"])
    return MllamaVisionConfig(**values)


def parse_mllama_config(raw: dict[str, Any]) -> MllamaConfig:
    """Build the typed config from a config.json dict; missing required keys raise ConfigError."""
    try:
        text = parse_text_config(raw["text_config"])
        vision = parse_vision_config(raw["vision_config"])
    except KeyError as missing:
        raise ConfigError(f"config.json is missing required key {missing}") from None
    expected_dim = vision.hidden_size * (1 + len(vision.intermediate_layers_indices))
    if vision.vision_output_dim != expected_dim:
        raise ConfigError(
            f"vision_config.vision_output_dim is {vision.vision_output_dim}, expected hidden_size x "
            f"(1 + len(intermediate_layers_indices)) = {expected_dim}"
        )
    return MllamaConfig(
        text=text,
        vision=vision,
        image_token_index=raw.get("image_token_index", raw.get("image_token_id", 128256)),
        dtype=config_dtype(raw),
    )
