"""Kernel dispatch: the Triton kernel on CUDA when Triton imports, its plain-torch twin elsewhere."""

import functools

import torch

from vlmserve.kernels import attention_ref


def paged_decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, scale: float,
) -> torch.Tensor:
    """The torch twin of the Triton decode kernel, with its signature (seq_lens a tensor)."""
    return attention_ref._decode_attention(q, k_cache, v_cache, block_tables, seq_lens.tolist(), scale)


@functools.cache
def _triton_paged_attention():
    """The Triton kernel module, or None where Triton does not import (imported lazily: CPU paths never load it)."""
    try:
        from vlmserve.kernels import paged_attention
    except ImportError:
        return None
    return paged_attention


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, scale: float,
) -> torch.Tensor:
    """q [B, heads, d] over paged caches [num_blocks, block_size, kv_heads, d] -> [B, heads, d]."""
    kernels = _triton_paged_attention() if q.is_cuda else None
    if kernels is not None:
        return kernels.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)
    return paged_decode_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale)
