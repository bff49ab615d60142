"""Triton cross-attention over each request's vision K/V, read in place from the KV pool by row index.

The fast twin of `attention_ref.cross_attention`. Grid (query block, KV head, split), as in the prefill kernel: a
program takes BLOCK_M rows, the GQA group's query heads of BLOCK_M // GROUP consecutive query rows of one sequence,
and walks its partition of that sequence's vision tokens in BLOCK_N tiles, gathering K and V through
`k_rows`/`v_rows` (no padded copy), with an online softmax in fp32. When every sequence has one row (decode), a
block is just the GQA group and the vision tokens are split (flash-decoding, `split_k`) to fill the SMs: one
4-tile image is 6404 tokens per sequence.

Visibility comes from the sequence's bool mask, packed flat with per-sequence offsets: exact for whatever rule
built it (Meta's, where a token sees its images' real tiles only, and transformers', where a row that sees no image
sees everything, padded tiles included). A tile no row of the block may see is skipped before its K/V are loaded,
which saves what per-row [start, end) ranges would (images a token no longer sees, padded tiles) at one mask byte
per (row, vision token), against 4 * head_dim bytes of bf16 K and V per (vision token, KV head) read.
"""

import torch
import triton
import triton.language as tl

from vlmserve.kernels import split_k
from vlmserve.kernels.attention_tiles import LOG2E, dot_precision, gqa_rows, normalise, pad, query_block, softmax_step
from vlmserve.kernels.split_k import partition, store_partials
from vlmserve.kernels.step_inputs import CrossInputs

# One config (the interpreter cannot autotune). Compiled for sm_90: 186 registers and no spills; 128 rows spill.
BLOCK_M = 64  # (query row, head) pairs per program, unless decoding
BLOCK_N = 64  # vision tokens per tile
NUM_WARPS = 8
DECODE_NUM_WARPS = 4
NUM_STAGES = 2


@triton.jit(do_not_specialize=["num_seqs"])
def _cross_attention_kernel(
    q_ptr, pool_ptr, k_rows_ptr, v_rows_ptr, kv_loc_ptr, q_loc_ptr, mask_ptr, mask_loc_ptr, out_ptr,
    part_out_ptr, part_m_ptr, part_l_ptr, scale_log2e, num_seqs,
    stride_qt, stride_qh,
    stride_pr, stride_ph,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq, q_start, q_end, first = query_block(q_loc_ptr, num_seqs, BLOCK_Q)
    kv_head = tl.program_id(1)
    if first >= q_end:
        return
    kv_start = tl.load(kv_loc_ptr + seq).to(tl.int64)
    kv_len = tl.load(kv_loc_ptr + seq + 1) - kv_start

    tokens, heads, row_ok = gqa_rows(first, q_end, kv_head, GROUP, BLOCK_M)
    mask_rows = tl.load(mask_loc_ptr + seq).to(tl.int64) + (tokens - q_start) * kv_len  # each row's mask [BLOCK_M]
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(q_ptr + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    lo, hi = partition(0, kv_len, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        visible = tl.load(mask_ptr + mask_rows[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                          other=0) != 0
        if tl.max(visible.to(tl.int32)) > 0:
            k_rows = tl.load(k_rows_ptr + kv_start + cols, mask=col_ok, other=0).to(tl.int64)
            v_rows = tl.load(v_rows_ptr + kv_start + cols, mask=col_ok, other=0).to(tl.int64)
            kv_mask = col_ok[:, None] & dim_ok[None, :]
            k = tl.load(pool_ptr + k_rows[:, None] * stride_pr + kv_head * stride_ph + dims[None, :],
                        mask=kv_mask, other=0.0)
            v = tl.load(pool_ptr + v_rows[:, None] * stride_pr + kv_head * stride_ph + dims[None, :],
                        mask=kv_mask, other=0.0)
            m_i, l_i, acc = softmax_step(q, k, v, visible, m_i, l_i, acc, scale_log2e, DOT_PRECISION)

    if SPLIT:
        store_partials(part_out_ptr, part_m_ptr, part_l_ptr, tokens, heads, acc, m_i, l_i, row_ok,
                       GROUP, HEAD_DIM, HEAD_DIM_PAD)
    else:
        tl.store(out_ptr + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :],
                 normalise(acc, l_i).to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def cross_attention(q: torch.Tensor, kv_pool: torch.Tensor, inputs: CrossInputs, scale: float,
                    num_splits: int | None = None) -> torch.Tensor:
    """Query rows q [R, heads, d], packed per sequence by inputs.query_start_loc, over their sequence's vision K/V
    rows of kv_pool [rows, kv_heads, d] under its mask -> [R, heads, d]. `num_splits`: partitions of each
    sequence's vision tokens, None to pick by the heuristic."""
    assert q.dim() == 3 and kv_pool.dim() == 3 and kv_pool.shape[2] == q.shape[2], (q.shape, kv_pool.shape)
    assert q.shape[1] % kv_pool.shape[1] == 0, (q.shape, kv_pool.shape)
    assert q.dtype == kv_pool.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert q.stride(2) == 1 and kv_pool.stride(2) == 1, "innermost dim must be contiguous"
    offsets = (inputs.k_rows, inputs.v_rows, inputs.kv_start_loc, inputs.query_start_loc, inputs.mask_start_loc)
    assert all(t.dtype in (torch.int32, torch.int64) and t.dim() == 1 and t.stride(0) == 1 for t in offsets)
    assert inputs.mask.dtype == torch.bool and inputs.mask.is_contiguous()
    assert inputs.query_start_loc.shape == inputs.kv_start_loc.shape == inputs.mask_start_loc.shape
    assert len({t.device for t in (q, kv_pool, inputs.mask, *offsets)}) == 1
    num_rows, heads, head_dim = q.shape
    kv_heads = kv_pool.shape[1]
    group = heads // kv_heads
    num_seqs = inputs.query_start_loc.shape[0] - 1
    decoding = num_rows == num_seqs  # one row per sequence: a block is one GQA group
    block_m = pad(group) if decoding else BLOCK_M
    assert group <= block_m, (heads, kv_pool.shape)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if num_rows == 0 or num_seqs == 0:
        return out
    block_q = block_m // group
    num_blocks = num_rows // block_q + num_seqs
    if num_splits is None:  # all sequences' vision tokens bound any one's
        num_splits = split_k.num_splits(num_blocks * kv_heads, inputs.k_rows.shape[0], split_k.num_sms(q.device))
    assert 1 <= num_splits <= split_k.MAX_SPLITS, num_splits
    partials = split_k.Partials(out, num_splits) if num_splits > 1 else None
    _cross_attention_kernel[(num_blocks, kv_heads, num_splits)](
        q, kv_pool, inputs.k_rows, inputs.v_rows, inputs.kv_start_loc, inputs.query_start_loc,
        inputs.mask.view(torch.uint8), inputs.mask_start_loc, out, *(partials.buffers if partials else (out,) * 3),
        scale * LOG2E, num_seqs,
        q.stride(0), q.stride(1),
        kv_pool.stride(0), kv_pool.stride(1),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, HEAD_DIM_PAD=pad(head_dim),
        BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=BLOCK_N, SPLIT=partials is not None,
        DOT_PRECISION=dot_precision(q.dtype), num_warps=DECODE_NUM_WARPS if decoding else NUM_WARPS,
        num_stages=NUM_STAGES, enable_fp_fusion=True,
    )
    return partials.reduce() if partials else out
