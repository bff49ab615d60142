"""Kernel dispatch: each function runs the Triton kernel on CUDA tensors when Triton imports, and its plain-torch
twin in `attention_ref`, with the same signature, elsewhere (the CPU path, and the reference in tests)."""

import functools
import importlib
from types import ModuleType

import torch

from vlmserve.kernels import attention_ref
from vlmserve.kernels.step_inputs import CrossInputs, DeviceLens


@functools.cache
def _triton_module(name: str) -> ModuleType | None:
    """vlmserve.kernels.<name>, or None where Triton does not import (imported lazily: CPU paths never load it)."""
    try:
        return importlib.import_module(f"vlmserve.kernels.{name}")
    except ImportError:
        return None


def _kernels(name: str, tensor: torch.Tensor) -> ModuleType:
    """The Triton module `name` for CUDA tensors when Triton imports, else attention_ref: the twins."""
    fast = _triton_module(name) if tensor.is_cuda else None
    return attention_ref if fast is None else fast


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store k/v [T, kv_heads, d] at slot_mapping [T] of the paged caches [num_blocks, block_size, kv_heads, d]
    (strided views of the pool); negative slots (padding) are skipped."""
    _kernels("kv_cache", k).write_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, scale: float, chunk_size: int | None = None, num_splits: int | None = None,
) -> torch.Tensor:
    """q [B, heads, d], one query per sequence at its last position, over the paged caches -> [B, heads, d]."""
    return _kernels("decode_attention", q).paged_decode_attention(
        q, k_cache, v_cache, block_tables, seq_lens, scale, chunk_size, num_splits)


def paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, query_start_loc: torch.Tensor, scale: float, chunk_size: int | None = None,
) -> torch.Tensor:
    """q [T, heads, d] packed by query_start_loc [S + 1], causal over each sequence's paged context -> [T, heads, d];
    the rows of sequences with one new token are left unwritten (the decode kernel's)."""
    return _kernels("prefill_attention", q).paged_prefill_attention(
        q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, chunk_size)


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor, lens: DeviceLens,
    scale: float, chunk_size: int | None = None,
) -> torch.Tensor:
    """Causal attention of a flat batch's new tokens q [T, heads, d] (decodes and prefill chunks), packed by
    lens.query_start_loc, over each sequence's paged context of lens.seq_lens tokens -> [T, heads, d]."""
    return _kernels("batch_attention", q).paged_attention(q, k_cache, v_cache, block_tables, lens, scale, chunk_size)


def cross_attention(q: torch.Tensor, kv_pool: torch.Tensor, inputs: CrossInputs, scale: float,
                    num_splits: int | None = None) -> torch.Tensor:
    """Query rows q [R, heads, d], packed per sequence, over their sequence's vision K/V rows of the pool
    [rows, kv_heads, d] under its mask -> [R, heads, d]."""
    return _kernels("vision_attention", q).cross_attention(q, kv_pool, inputs, scale, num_splits)
