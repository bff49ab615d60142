import math

import torch
from torch import nn

from vlmserve.layers.rope_config import RopeConfig


def llama3_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim/2], with Llama 3's long-context scaling when configured."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if rope.rope_type != "llama3":
        return inv_freq
    orig = rope.original_max_position_embeddings
    low_wavelen = orig / rope.low_freq_factor
    high_wavelen = orig / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (orig / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE in the rotate-half layout (the halves of each head are paired; HF permuted q/k for it)."""

    def __init__(self, head_dim: int, rope: RopeConfig):
        super().__init__()
        self.head_dim, self.rope = head_dim, rope
        self.register_buffer("inv_freq", llama3_inv_freq(head_dim, rope), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute inv_freq in fp32 (after the model was built on the meta device and materialised)."""
        self.inv_freq = llama3_inv_freq(self.head_dim, self.rope).to(self.inv_freq.device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, heads, head_dim]; k [T, kv_heads, head_dim]."""
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, head_dim]
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE: x [..., d] read as d/2 complex numbers (x[2j], x[2j+1]), each times its unit rotation
    (complex, broadcast to [..., d/2]); computed in fp32, returned in x's dtype."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


class InterleavedRotaryEmbedding(RotaryEmbedding):
    """RoPE in the interleaved layout (Llama 4: pairs (x[2j], x[2j+1]) rotate as complex numbers; the q/k weights
    were not permuted)."""

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, heads, head_dim]; k [T, kv_heads, head_dim]."""
        angles = positions[:, None].float() * self.inv_freq[None, :]  # [T, head_dim/2]
        rotation = torch.polar(torch.ones_like(angles), angles)[:, None, :]  # [T, 1, head_dim/2]
        return rotate_pairs(q, rotation), rotate_pairs(k, rotation)
