"""Attention cores: paged causal self-attention and cross-attention over per-request vision K/V."""

import torch
from torch import nn

from vlmserve import kernels
from vlmserve.layers.attention_metadata import AttentionMetadata, CrossBatch


class PagedAttention(nn.Module):
    """Writes the step's K/V into this layer's paged cache, then attends over each sequence's context (only its
    own `chunk_size`-aligned chunk of it when chunk_size is set: Llama 4's local-attention layers)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, chunk_size: int | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.chunk_size = chunk_size
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """Attach this layer's [num_blocks, block_size, kv_heads, head_dim] caches (done once by the runner)."""
        self.k_cache, self.v_cache = k_cache, v_cache

    def forward(self, q, k, v, metadata: AttentionMetadata) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] -> [T, heads, d]."""
        kernels.write_kv_cache(k, v, self.k_cache, self.v_cache, metadata.slot_mapping)
        return kernels.paged_attention(q, self.k_cache, self.v_cache, metadata.block_tables, metadata.lens,
                                       self.scale, self.chunk_size)


def cross_attention(q: torch.Tensor, layer_idx: int, cross: CrossBatch, scale: float) -> torch.Tensor:
    """The cross-attending rows' queries [R, heads, d], each sequence's over its own vision K/V."""
    return kernels.cross_attention(q, cross.kv_pool, cross.layer_inputs[layer_idx], scale)
