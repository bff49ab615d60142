"""Triton paged decode attention: one query token per sequence over its paged KV cache, GQA-aware.

The fast twin of `attention_ref._decode_attention` (see `vlmserve.kernels.paged_decode_attention_ref`).
One program per (sequence, kv head) handles all the query heads of that head's GQA group: it walks the
context in BLOCK_N-token tiles through the block table and keeps an online softmax in fp32.
No split-K yet: long contexts with few sequences leave SMs idle (the next step is a split-K variant).
"""

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # context tokens per tile; one config for now
NUM_WARPS = 4


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr,
    scale_log2e,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tb, stride_tn,
    stride_ob, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = seq.to(tl.int64)
    seq_len = tl.load(lens_ptr + seq)

    rows = tl.arange(0, GROUP_PAD)  # query heads of this GQA group
    dims = tl.arange(0, HEAD_DIM_PAD)
    row_ok = rows < GROUP
    dim_ok = dims < HEAD_DIM
    heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    for start in range(0, seq_len, BLOCK_N):
        tokens = start + tl.arange(0, BLOCK_N)
        tok_ok = tokens < seq_len
        blocks = tl.load(tables_ptr + seq * stride_tb + (tokens // BLOCK_SIZE) * stride_tn, mask=tok_ok, other=0)
        blocks = blocks.to(tl.int64)
        offsets = tokens % BLOCK_SIZE
        kv_mask = tok_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + blocks[:, None] * stride_kb + offsets[:, None] * stride_ks + kv_head * stride_kh
                    + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + blocks[:, None] * stride_vb + offsets[:, None] * stride_vs + kv_head * stride_vh
                    + dims[None, :], mask=kv_mask, other=0.0)

        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2e  # [GROUP_PAD, BLOCK_N]
        scores = tl.where(tok_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))  # finite: every tile holds at least one valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # seq_len == 0 gives zeros, not NaN
    tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [B, heads, d] (one query per sequence, at its last position) over the paged caches
    [num_blocks, block_size, kv_heads, d] (strided views of a pool are fine) -> [B, heads, d]."""
    assert q.dim() == 3 and k_cache.dim() == 4 and v_cache.shape == k_cache.shape, (q.shape, k_cache.shape)
    batch, heads, head_dim = q.shape
    _, block_size, kv_heads, cache_dim = k_cache.shape
    assert cache_dim == head_dim and heads % kv_heads == 0, (q.shape, k_cache.shape)
    assert q.dtype == k_cache.dtype == v_cache.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert block_tables.dim() == 2 and block_tables.shape[0] == batch and block_tables.dtype in (torch.int32, torch.int64)
    assert seq_lens.shape == (batch,) and seq_lens.dtype in (torch.int32, torch.int64)
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "innermost dim must be contiguous"
    assert seq_lens.stride(0) == 1 or batch <= 1
    assert len({t.device for t in (q, k_cache, v_cache, block_tables, seq_lens)}) == 1
    group = heads // kv_heads
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if batch == 0:
        return out
    _paged_decode_kernel[(batch, kv_heads)](
        q, k_cache, v_cache, block_tables, seq_lens, out,
        scale * 1.4426950408889634,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), block_tables.stride(1),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=NUM_WARPS,
    )
    return out
