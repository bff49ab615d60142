"""Triton paged prefill attention: the new tokens of each sequence (varlen, packed by query_start_loc) attend
causally over the sequence's whole context in the paged cache (cached prefix blocks + the new tokens, whose K/V
were just written), for prefix-cache hits and chunked prefill; GQA-aware, with Llama 4's chunked local attention.

The fast twin of `attention_ref.paged_prefill_attention`. Grid (query block, KV head): a program takes BLOCK_M
rows, the GQA group's query heads of BLOCK_M // GROUP consecutive new tokens of one sequence (found by binary
search over query_start_loc, so the grid needs only host-known sizes), and walks the keys in BLOCK_N-token tiles
through the block table, flash-attention style (online softmax, fp32 accumulation), up to the block's last
position; with chunk_size C, from the start of its first row's chunk. Sequences with one new token are the decode
kernel's and are skipped.
"""

import torch
import triton
import triton.language as tl

from vlmserve.kernels.attention_tiles import (
    LOG2E, check_paged_inputs, dot_precision, gqa_rows, load_paged_kv, normalise, pad, query_block, softmax_step,
)

BLOCK_M = 128  # (token, query head) rows per program; one config (the interpreter cannot autotune)
BLOCK_N = 64  # keys per tile
NUM_WARPS = 8
NUM_STAGES = 2


@triton.jit(do_not_specialize=["num_seqs"])
def _paged_prefill_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, q_loc_ptr, out_ptr,
    scale_log2e, chunk_size, num_seqs,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tb, stride_tn,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, CHUNKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq, q_start, q_end, first = query_block(q_loc_ptr, num_seqs, BLOCK_Q)
    kv_head = tl.program_id(1)
    if (q_end - q_start < 2) | (first >= q_end):
        return
    seq_len = tl.load(lens_ptr + seq)

    tokens, heads, row_ok = gqa_rows(first, q_end, kv_head, GROUP, BLOCK_M)
    pos = seq_len - q_end + tokens  # each row's position in its sequence
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(q_ptr + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    last = seq_len - q_end + tl.minimum(first + BLOCK_Q, q_end)  # one past the block's last position
    lo = 0
    if CHUNKED:
        lo = (seq_len - q_end + first) // chunk_size * chunk_size // BLOCK_N * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start in range(lo, last, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k, v = load_paged_kv(k_ptr, v_ptr, tables_ptr + seq * stride_tb, keys, keys < last, kv_head, dims, dim_ok,
                             stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_tn, BLOCK_SIZE)
        visible = keys[None, :] <= pos[:, None]
        if CHUNKED:
            visible = visible & (keys[None, :] // chunk_size == pos[:, None] // chunk_size)
        m_i, l_i, acc = softmax_step(q, k, v, visible, m_i, l_i, acc, scale_log2e, DOT_PRECISION)

    tl.store(out_ptr + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :],
             normalise(acc, l_i).to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """q [T, heads, d], the new tokens of every sequence packed by query_start_loc [S + 1], each sequence's the
    last of its seq_lens[s] context tokens, over the paged caches [num_blocks, block_size, kv_heads, d] (strided
    views of a pool are fine) -> [T, heads, d]. Rows of sequences with one new token are left unwritten."""
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens)
    num_tokens, heads, head_dim = q.shape
    num_seqs, (_, block_size, kv_heads, _) = block_tables.shape[0], k_cache.shape
    assert query_start_loc.shape == (num_seqs + 1,) and query_start_loc.dtype in (torch.int32, torch.int64)
    assert query_start_loc.stride(0) == 1 and query_start_loc.device == q.device
    group = heads // kv_heads
    assert group <= BLOCK_M, (heads, kv_heads)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if num_tokens == 0 or num_seqs == 0:
        return out
    block_q = BLOCK_M // group
    _paged_prefill_kernel[(num_tokens // block_q + num_seqs, kv_heads)](
        q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, out,
        scale * LOG2E, chunk_size or 0, num_seqs,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), block_tables.stride(1),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, HEAD_DIM_PAD=pad(head_dim), BLOCK_SIZE=block_size,
        BLOCK_M=BLOCK_M, BLOCK_Q=block_q, BLOCK_N=BLOCK_N, CHUNKED=chunk_size is not None,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=NUM_WARPS, num_stages=NUM_STAGES, enable_fp_fusion=True,
    )
    return out
