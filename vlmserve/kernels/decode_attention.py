"""Triton paged decode attention: one query token per sequence over its paged KV cache, GQA-aware, split over
long contexts (flash-decoding, `split_k`), with Llama 4's chunked local attention.

The fast twin of `attention_ref.paged_decode_attention`. Grid (sequence, KV head, split): a program takes all the
query heads of its KV head's GQA group (GROUP_PAD rows of one tl.dot) over its partition of the sequence's context,
BLOCK_N tokens a tile through the block table, with an online softmax in fp32. With chunk_size C the query at
position seq_len - 1 sees the keys from ((seq_len - 1) // C) * C on: tiles before that are never visited, and the
partitions divide only that window.
"""

import torch
import triton
import triton.language as tl

from vlmserve.kernels import split_k
from vlmserve.kernels.attention_tiles import (
    LOG2E, check_paged_inputs, dot_precision, gqa_rows, load_paged_kv, normalise, pad, softmax_step,
)
from vlmserve.kernels.split_k import partition, store_partials

BLOCK_N = 64  # context tokens per tile; one config (the interpreter cannot autotune)
NUM_WARPS = 4


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, part_out_ptr, part_m_ptr, part_l_ptr,
    scale_log2e, chunk_size,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tb, stride_tn,
    stride_ob, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CHUNKED: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    seq_len = tl.load(lens_ptr + seq)

    _, heads, row_ok = gqa_rows(seq, seq + 1, kv_head, GROUP, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    window = 0  # first visible key
    if CHUNKED:
        window = tl.maximum(seq_len - 1, 0) // chunk_size * chunk_size
    lo, hi = partition(window // BLOCK_N * BLOCK_N, seq_len, BLOCK_N)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        tokens = start + tl.arange(0, BLOCK_N)
        tok_ok = (tokens >= window) & (tokens < hi)
        k, v = load_paged_kv(k_ptr, v_ptr, tables_ptr + seq * stride_tb, tokens, tok_ok, kv_head, dims, dim_ok,
                             stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_tn, BLOCK_SIZE)
        m_i, l_i, acc = softmax_step(q, k, v, tok_ok[None, :], m_i, l_i, acc, scale_log2e, DOT_PRECISION)

    if SPLIT:
        store_partials(part_out_ptr, part_m_ptr, part_l_ptr, seq, heads, acc, m_i, l_i, row_ok,
                       GROUP, HEAD_DIM, HEAD_DIM_PAD)
    else:
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
                 normalise(acc, l_i).to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    chunk_size: int | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """q [B, heads, d] (one query per sequence, at its last position) over the paged caches
    [num_blocks, block_size, kv_heads, d] (strided views of a pool are fine) -> [B, heads, d]. The block tables
    must cover every context. `num_splits`: context partitions per sequence, None to pick by the heuristic."""
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens)
    batch, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    assert block_tables.shape[0] == batch, (block_tables.shape, q.shape)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if batch == 0:
        return out
    if num_splits is None:
        span = block_tables.shape[1] * block_size  # tokens a query can see, at most
        if chunk_size is not None:
            span = min(span, chunk_size + BLOCK_N - 1)  # the window, from its tile-aligned start
        num_splits = split_k.num_splits(batch * kv_heads, span, split_k.num_sms(q.device))
    assert 1 <= num_splits <= split_k.MAX_SPLITS, num_splits
    partials = split_k.Partials(out, num_splits) if num_splits > 1 else None
    _paged_decode_kernel[(batch, kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, *(partials.buffers if partials else (out,) * 3),
        scale * LOG2E, chunk_size or 0,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), block_tables.stride(1),
        out.stride(0), out.stride(1),
        GROUP=heads // kv_heads, GROUP_PAD=pad(heads // kv_heads), HEAD_DIM=head_dim, HEAD_DIM_PAD=pad(head_dim),
        BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N, CHUNKED=chunk_size is not None, SPLIT=partials is not None,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=NUM_WARPS, enable_fp_fusion=True,
    )
    return partials.reduce() if partials else out
