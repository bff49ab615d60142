"""Triton building blocks the attention kernels share: GQA-packed query rows, a varlen query block's sequence, a
K/V tile through the block table, one online-softmax step (fp32 statistics, max in log2 units); and the
launchers' shared checks."""

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def gqa_rows(first, end, kv_head, GROUP: tl.constexpr, BLOCK_M: tl.constexpr):
    """BLOCK_M rows as (token, query head) pairs: the GROUP query heads of `kv_head` for the BLOCK_M // GROUP
    tokens from `first`; rows past that, or at tokens >= `end`, are not valid."""
    rows = tl.arange(0, BLOCK_M)
    tokens = first + rows // GROUP
    heads = kv_head * GROUP + rows % GROUP
    return tokens, heads, (rows < (BLOCK_M // GROUP) * GROUP) & (tokens < end)


@triton.jit
def query_block(query_start_loc_ptr, num_seqs, BLOCK_Q: tl.constexpr):
    """This program's sequence, its query rows [q_start, q_end) and the first of the BLOCK_Q rows it takes (>= q_end:
    none). Sequence s's blocks are numbered from query_start_loc[s] // BLOCK_Q + s, found by binary search: a grid of
    T // BLOCK_Q + S programs covers every sequence with no prefix sum over block counts."""
    q_block = tl.program_id(0)
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid <= q_block:
            lo = mid + 1
        else:
            hi = mid
    seq = lo - 1
    q_start = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    q_end = tl.load(query_start_loc_ptr + seq + 1)
    return seq, q_start, q_end, q_start + (q_block - (q_start // BLOCK_Q + seq)) * BLOCK_Q


@triton.jit
def load_paged_kv(k_ptr, v_ptr, table_ptr, keys, key_ok, kv_head, dims, dim_ok,
                  stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_tn,
                  BLOCK_SIZE: tl.constexpr):
    """K and V [len(keys), len(dims)] of one KV head at context positions `keys`, through the sequence's block-table
    row at table_ptr; zeros where not key_ok."""
    blocks = tl.load(table_ptr + (keys // BLOCK_SIZE) * stride_tn, mask=key_ok, other=0).to(tl.int64)
    offsets = keys % BLOCK_SIZE
    mask = key_ok[:, None] & dim_ok[None, :]
    k = tl.load(k_ptr + blocks[:, None] * stride_kb + offsets[:, None] * stride_ks + kv_head * stride_kh
                + dims[None, :], mask=mask, other=0.0)
    v = tl.load(v_ptr + blocks[:, None] * stride_vb + offsets[:, None] * stride_vs + kv_head * stride_vh
                + dims[None, :], mask=mask, other=0.0)
    return k, v


@triton.jit
def softmax_step(q, k, v, visible, m_i, l_i, acc, scale_log2e, DOT_PRECISION: tl.constexpr):
    """Attend rows q [M, D] to a key tile k, v [N, D] where visible [M, N]: returns the updated running max,
    sum and unnormalised output. Rows that see nothing yet keep max -inf and contribute zeros."""
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2e
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def normalise(acc, l_i):
    """The attention output of rows with running sum l_i; rows that saw nothing give zeros, not NaN."""
    return acc / tl.where(l_i > 0, l_i, 1.0)[:, None]


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs are multiplied exactly (the interpreter tests run fp32); bf16/fp16 accumulate in fp32 anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


def pad(n: int) -> int:
    """A tile extent for n: a power of two, at least 16 (tl.dot's smallest)."""
    return max(16, triton.next_power_of_2(n))


def check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens) -> None:
    """Launcher checks shared by the paged kernels: dtypes, shapes, unit innermost strides, one device."""
    assert q.dim() == 3 and k_cache.dim() == 4 and v_cache.shape == k_cache.shape, (q.shape, k_cache.shape)
    assert k_cache.shape[3] == q.shape[2] and q.shape[1] % k_cache.shape[2] == 0, (q.shape, k_cache.shape)
    assert q.dtype == k_cache.dtype == v_cache.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert block_tables.dim() == 2 and block_tables.dtype in (torch.int32, torch.int64)
    assert seq_lens.shape == (block_tables.shape[0],) and seq_lens.dtype in (torch.int32, torch.int64)
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "innermost dim must be contiguous"
    assert seq_lens.stride(0) == 1 or seq_lens.shape[0] <= 1
    assert len({t.device for t in (q, k_cache, v_cache, block_tables, seq_lens)}) == 1
