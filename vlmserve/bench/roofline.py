"""The memory floor of a decode step: the bytes it must read, and the time reading them takes at the measured
copy bandwidth (which counts bytes read plus bytes written, see measure.copy_bandwidth).

A decode step reads the text decoder's weights (the embedding table excluded: a step reads one row of it per
sequence; the LM head included), every sequence's self-attention K and V up to its current token, and, for each
request with images, the cross-attention K and V of its images' real tiles in every cross-attention layer.
"""

from dataclasses import asdict, dataclass

from torch import nn

TEXT_DECODER = "language_model."
EMBEDDING = "embed_tokens"


@dataclass(frozen=True)
class StepBytes:
    weights: int
    kv_cache: int
    vision_kv: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.vision_kv

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def text_decoder_weight_bytes(model: nn.Module) -> int:
    """Bytes of the text decoder's parameters, LM head included, embedding table excluded (meta tensors count)."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if name.startswith(TEXT_DECODER) and EMBEDDING not in name)


def decode_step_bytes(config, weight_bytes: int, element_size: int, context_lens: list[int],
                      image_tiles: list[int]) -> StepBytes:
    """What one decode step of a batch must read. `context_lens`: per sequence, the tokens whose K/V the step
    attends to (its new one included; a mean over steps may be fractional); `image_tiles`: per image of the
    batch's requests, its real tiles."""
    text = config.text
    kv_per_token = 2 * text.num_key_value_heads * text.head_dim * element_size  # K and V, one layer
    kv_cache = len(text.self_attention_layers) * kv_per_token * sum(context_lens)
    vision_kv = len(text.cross_attention_layers) * kv_per_token * config.vision.num_patches * sum(image_tiles)
    return StepBytes(weight_bytes, round(kv_cache), vision_kv)


def roofline(step: StepBytes, bandwidth: float, step_seconds: float) -> dict:
    """The floor time of a step at `bandwidth` bytes/s and the fraction of it a measured step reaches."""
    floor = step.total / bandwidth
    return {"bytes_per_step": step.as_dict(), "roofline_ms": floor * 1e3, "fraction": floor / step_seconds}
