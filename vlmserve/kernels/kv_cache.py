"""Triton KV-cache write: each new token's keys and values to its slot of the paged caches.

The fast twin of `attention_ref.write_kv_cache`. Grid (token,): a program copies one token's [kv_heads, head_dim]
K and V to block slot // block_size, offset slot % block_size of the caches (strided views of the block-major
pool). A negative slot marks a padding row (a CUDA-graph batch padded to its bucket): nothing is written.
"""

import torch
import triton
import triton.language as tl

NUM_WARPS = 4


@triton.jit
def _write_kv_cache_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_kt, stride_kh,
    stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch,
    stride_vcb, stride_vcs, stride_vch,
    KV_HEADS: tl.constexpr, KV_HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.arange(0, KV_HEADS_PAD)[:, None]
    dims = tl.arange(0, HEAD_DIM_PAD)[None, :]
    mask = (heads < KV_HEADS) & (dims < HEAD_DIM)
    k = tl.load(k_ptr + token * stride_kt + heads * stride_kh + dims, mask=mask)
    v = tl.load(v_ptr + token * stride_vt + heads * stride_vh + dims, mask=mask)
    tl.store(k_cache_ptr + block * stride_kcb + offset * stride_kcs + heads * stride_kch + dims, k, mask=mask)
    tl.store(v_cache_ptr + block * stride_vcb + offset * stride_vcs + heads * stride_vch + dims, v, mask=mask)


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store k/v [T, kv_heads, head_dim] at slot_mapping [T] of the caches [num_blocks, block_size, kv_heads,
    head_dim]; negative slots are skipped."""
    assert k.dim() == 3 and k.shape == v.shape and k_cache.dim() == 4 and v_cache.shape == k_cache.shape
    assert k.shape[1:] == k_cache.shape[2:], (k.shape, k_cache.shape)
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype, (k.dtype, k_cache.dtype)
    assert slot_mapping.shape == (k.shape[0],) and slot_mapping.dtype in (torch.int32, torch.int64)
    assert slot_mapping.stride(0) == 1 or k.shape[0] <= 1
    assert k.stride(2) == v.stride(2) == k_cache.stride(3) == v_cache.stride(3) == 1, "innermost dim must be contiguous"
    assert len({t.device for t in (k, v, k_cache, v_cache, slot_mapping)}) == 1
    num_tokens, kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    _write_kv_cache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1),
        v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        KV_HEADS=kv_heads, KV_HEADS_PAD=triton.next_power_of_2(kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=triton.next_power_of_2(head_dim), BLOCK_SIZE=k_cache.shape[1],
        num_warps=NUM_WARPS, enable_fp_fusion=True,
    )
