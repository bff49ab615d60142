"""Typed Llama 4 (Scout, Maverick) architecture config, parsed and validated once from a `config.json`.

Accepts the Hub spelling (`rope_scaling` + `rope_theta`, `torch_dtype`, `"attn_temperature_tuning": 4`) and the
transformers 5.x spelling (`rope_parameters`, `dtype`, a bool). The main dimensions are required (transformers'
vision defaults describe no real model); other keys a config leaves out take transformers' defaults.
"""

from dataclasses import dataclass
from typing import Any

from vlmserve.layers.mlp import ACTIVATIONS
from vlmserve.layers.rope_config import RopeConfig
from vlmserve.models.config_common import (
    ConfigError,
    config_dtype,
    parse_rope_config,
    token_ids,
)

_REQUIRED = object()


@dataclass(frozen=True)
class Llama4TextConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int  # each routed expert and the shared expert
    intermediate_size_mlp: int  # the dense feed-forward of layers outside moe_layers
    num_local_experts: int
    num_experts_per_tok: int
    moe_layers: tuple[int, ...]
    no_rope_layers: tuple[int, ...]  # 1 = the layer USES RoPE (the Hub's name is inverted)
    attention_chunk_size: int | None  # RoPE layers attend within chunks of this many positions
    use_qk_norm: bool
    attn_temperature_tuning: bool
    floor_scale: float
    attn_scale: float
    rope: RopeConfig
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = None

    def uses_rope(self, layer: int) -> bool:
        """RoPE layers: chunked attention and qk-norm. The others (NoPE): global attention, temperature tuning."""
        return bool(self.no_rope_layers[layer])

    @property
    def self_attention_layers(self) -> list[int]:
        """Every layer attends over the paged KV cache."""
        return list(range(self.num_hidden_layers))

    @property
    def cross_attention_layers(self) -> list[int]:
        """Image features enter as input embeddings: there is no cross-attention."""
        return []


@dataclass(frozen=True)
class Llama4VisionConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int  # the encoder MLP width, and the pixel-shuffled width (hidden / ratio^2)
    image_size: int
    patch_size: int
    vision_output_dim: int
    num_channels: int = 3
    pixel_shuffle_ratio: float = 0.5
    projector_input_dim: int = 4096
    projector_output_dim: int = 4096
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    multi_modal_projector_bias: bool = False

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Encoder tokens per tile: the patch grid plus the class token."""
        return self.grid_size**2 + 1

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one tile gives the decoder, after the pixel shuffle."""
        return round(self.grid_size**2 * self.pixel_shuffle_ratio**2)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Llama4Config:
    text: Llama4TextConfig
    vision: Llama4VisionConfig
    image_token_index: int = 200092  # <|patch|>: replaced by image features
    boi_token_index: int = 200080  # <|image_start|>
    eoi_token_index: int = 200081  # <|image_end|>
    dtype: str | None = None
    model_type: str = "llama4"

    def tp_split_sizes(self) -> dict[str, int]:
        """The sizes tensor-parallel ranks split into equal shares, which their number must divide (kv heads,
        which may be replicated instead, are vlmserve/distributed/sharding.py's own check)."""
        return {"text num_attention_heads": self.text.num_attention_heads,
                "text intermediate_size": self.text.intermediate_size,
                "text intermediate_size_mlp": self.text.intermediate_size_mlp,
                "vision num_attention_heads": self.vision.num_attention_heads,
                "vision intermediate_size": self.vision.intermediate_size}


def _int(section: dict, where: str, key: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
    value = section.get(key, default)
    if value is _REQUIRED:
        raise ConfigError(f"config.json is missing required key '{where}.{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"'{where}.{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _float(section: dict, where: str, key: str, default: float, minimum: float = 0.0) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"'{where}.{key}' must be a number >= {minimum}, got {value!r}")
    return float(value)


def _flag(section: dict, where: str, key: str, default: bool) -> bool:
    """A bool; an int counts as truthy or not (the Hub's `"attn_temperature_tuning": 4`)."""
    value = section.get(key, default)
    if not isinstance(value, (bool, int)):
        raise ConfigError(f"'{where}.{key}' must be true/false, got {value!r}")
    return bool(value)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' {message}")


def _moe_layers(text: dict, num_layers: int) -> tuple[int, ...]:
    """The layers whose feed-forward is the MoE: as given, else every interleave_moe_layer_step-th layer."""
    if text.get("moe_layers") is None:
        step = _int(text, "text_config", "interleave_moe_layer_step", 1)
        return tuple(range(step - 1, num_layers, step))
    layers = tuple(text["moe_layers"])
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    _check(not bad, "text_config.moe_layers", f"names layer {bad[:1]}, outside 0..{num_layers - 1}")
    return layers


def _no_rope_layers(text: dict, num_layers: int) -> tuple[int, ...]:
    """Per layer, 1 = RoPE. Default (also for an empty list, as in transformers): every interval-th layer is NoPE."""
    given = text.get("no_rope_layers")
    if not given:
        interval = _int(text, "text_config", "no_rope_layer_interval", 4)
        return tuple(int((i + 1) % interval != 0) for i in range(num_layers))
    _check(len(given) >= num_layers and all(v in (0, 1) for v in given), "text_config.no_rope_layers",
           f"must hold a 0 or 1 for each of the {num_layers} layers, got {given!r}")
    return tuple(int(v) for v in given[:num_layers])


def parse_text_config(text: dict[str, Any]) -> Llama4TextConfig:
    where = "text_config"
    num_layers = _int(text, where, "num_hidden_layers")
    heads = _int(text, where, "num_attention_heads")
    kv_heads = _int(text, where, "num_key_value_heads", heads)
    _check(heads % kv_heads == 0, f"{where}.num_key_value_heads",
           f"({kv_heads}) must divide num_attention_heads ({heads})")
    hidden = _int(text, where, "hidden_size")
    head_dim = text.get("head_dim", 128)  # transformers: absent -> 128, null -> hidden / heads
    head_dim = hidden // heads if head_dim is None else head_dim
    _check(isinstance(head_dim, int) and head_dim > 0 and head_dim % 2 == 0, f"{where}.head_dim",
           f"must be a positive even integer (RoPE rotates pairs), got {head_dim!r}")
    experts = _int(text, where, "num_local_experts", 16)
    top_k = _int(text, where, "num_experts_per_tok", 1)
    _check(top_k <= experts, f"{where}.num_experts_per_tok", f"({top_k}) exceeds num_local_experts ({experts})")
    chunk = text.get("attention_chunk_size", 8192)
    hidden_act = text.get("hidden_act", "silu")
    _check(hidden_act in ACTIVATIONS, f"{where}.hidden_act", f"{hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
    return Llama4TextConfig(
        vocab_size=_int(text, where, "vocab_size"),
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_int(text, where, "intermediate_size"),
        intermediate_size_mlp=_int(text, where, "intermediate_size_mlp", 16384),
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        moe_layers=_moe_layers(text, num_layers),
        no_rope_layers=_no_rope_layers(text, num_layers),
        attention_chunk_size=None if chunk is None else _int(text, where, "attention_chunk_size"),
        use_qk_norm=_flag(text, where, "use_qk_norm", True),
        attn_temperature_tuning=_flag(text, where, "attn_temperature_tuning", True),
        floor_scale=_float(text, where, "floor_scale", 8192, minimum=1e-9),
        attn_scale=_float(text, where, "attn_scale", 0.1),
        rope=parse_rope_config(text),
        hidden_act=hidden_act,
        rms_norm_eps=_float(text, where, "rms_norm_eps", 1e-5),
        max_position_embeddings=_int(text, where, "max_position_embeddings", 131072),
        bos_token_id=text.get("bos_token_id", 1),
        eos_token_ids=token_ids(text.get("eos_token_id", 2)),
        pad_token_id=text.get("pad_token_id"),
    )


def parse_vision_config(vision: dict[str, Any]) -> Llama4VisionConfig:
    where = "vision_config"
    rope = vision.get("rope_parameters") or {}
    config = Llama4VisionConfig(
        **{key: _int(vision, where, key) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                      "intermediate_size", "image_size", "patch_size",
                                                      "vision_output_dim")},
        num_channels=_int(vision, where, "num_channels", 3),
        pixel_shuffle_ratio=_float(vision, where, "pixel_shuffle_ratio", 0.5, minimum=1e-9),
        projector_input_dim=_int(vision, where, "projector_input_dim", 4096),
        projector_output_dim=_int(vision, where, "projector_output_dim", 4096),
        norm_eps=_float(vision, where, "norm_eps", 1e-5),
        rope_theta=_float(rope, f"{where}.rope_parameters", "rope_theta", vision.get("rope_theta", 10000.0)),
        multi_modal_projector_bias=_flag(vision, where, "multi_modal_projector_bias", False),
    )
    _validate_vision_shapes(config)
    return config


def _validate_vision_shapes(config: Llama4VisionConfig) -> None:
    """The widths transformers' Llama 4 wires together must agree."""
    where = "vision_config"
    _check(config.hidden_size % config.num_attention_heads == 0 and config.head_dim % 4 == 0,
           f"{where}.num_attention_heads", "must split hidden_size into heads of a multiple of 4 (2-D RoPE: "
           f"half the pairs for x, half for y), got hidden_size {config.hidden_size}")
    shuffle = round(1 / config.pixel_shuffle_ratio)
    _check(abs(shuffle * config.pixel_shuffle_ratio - 1) < 1e-6 and config.grid_size % shuffle == 0,
           f"{where}.pixel_shuffle_ratio", f"must be 1/n for an n dividing the {config.grid_size}-patch grid, "
           f"got {config.pixel_shuffle_ratio}")
    shuffled = config.hidden_size * shuffle**2
    _check(config.intermediate_size == shuffled, f"{where}.intermediate_size",
           f"must equal the pixel-shuffled width hidden_size / ratio^2 = {shuffled}, got {config.intermediate_size}")
    _check(config.projector_input_dim == config.projector_output_dim == config.vision_output_dim,
           f"{where}.vision_output_dim", "must equal projector_input_dim and projector_output_dim, got "
           f"{config.vision_output_dim}, {config.projector_input_dim}, {config.projector_output_dim}")


def parse_llama4_config(raw: dict[str, Any]) -> Llama4Config:
    """Build the typed config from a config.json dict; a missing or invalid key raises ConfigError naming it."""
    for key in ("text_config", "vision_config"):
        _check(isinstance(raw.get(key), dict), key, "is missing from config.json or is not an object")
    try:
        text = parse_text_config(raw["text_config"])
    except KeyError as missing:  # a llama3 rope_parameters without one of its keys
        key = f"text_config.rope_parameters.{missing.args[0]}"
        raise ConfigError(f"config.json is missing required key '{key}'") from None
    config = Llama4Config(
        text=text,
        vision=parse_vision_config(raw["vision_config"]),
        image_token_index=_int(raw, "config", "image_token_index", raw.get("image_token_id", 200092), minimum=0),
        boi_token_index=_int(raw, "config", "boi_token_index", 200080, minimum=0),
        eoi_token_index=_int(raw, "config", "eoi_token_index", 200081, minimum=0),
        dtype=config_dtype(raw),
    )
    _check(config.image_token_index < text.vocab_size, "image_token_index",
           f"({config.image_token_index}) must be a row of the {text.vocab_size}-token embedding table")
    return config
