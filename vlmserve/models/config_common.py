"""What the model families' config parsers share: the error they raise and the sections their configs spell alike."""

from typing import Any

from vlmserve.layers.rope_config import RopeConfig


class ConfigError(ValueError):
    """A config.json that cannot describe a model we serve."""


def parse_rope_config(text: dict[str, Any]) -> RopeConfig:
    """The text config's RoPE, from `rope_scaling` + `rope_theta` (Hub) or `rope_parameters` (transformers 5.x).
    A llama3 section without one of its keys raises KeyError naming it."""
    params = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    theta = params.pop("rope_theta", text.get("rope_theta", 500000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"unsupported rope_type {rope_type!r}; supported: 'default', 'llama3'")
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )


def token_ids(value) -> tuple[int, ...]:
    """A config's token id field (one id, a list of them, or null) as a tuple."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def config_dtype(raw: dict[str, Any]) -> str | None:
    """The checkpoint's dtype: `dtype` (transformers 5.x) or `torch_dtype` (Hub)."""
    return raw.get("dtype") or raw.get("torch_dtype")
