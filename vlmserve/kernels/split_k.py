"""Flash-decoding for the Triton attention kernels: when the (query block, KV head) programs are too few to fill
the SMs, each one's keys are split into partitions (grid axis 2). Each partition writes its unnormalised output,
running max (log2 units) and sum in fp32; `_reduce_splits_kernel`, grid (row, head), combines them."""

import functools

import torch
import triton
import triton.language as tl

MIN_PARTITION = 512  # keys: a shorter partition saves less than its share of the reduction costs
MAX_SPLITS = 64  # the reduction holds [splits, head_dim] fp32 in registers
NUM_WARPS = 4


@triton.jit
def partition(lo, hi, BLOCK_N: tl.constexpr):
    """This program's share [start, end) of the keys [lo, hi): equal BLOCK_N-aligned parts, one per split."""
    size = tl.cdiv(tl.cdiv(hi - lo, tl.num_programs(2)), BLOCK_N) * BLOCK_N
    start = lo + tl.program_id(2) * size
    return start, tl.minimum(start + size, hi)


@triton.jit
def store_partials(part_out_ptr, part_m_ptr, part_l_ptr, rows, heads, acc, m_i, l_i, row_ok,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr):
    """Store this split's acc [M, HEAD_DIM_PAD], max and sum [M] of query (row, head) pairs into the partials
    [rows, heads, splits, (HEAD_DIM)], contiguous."""
    dims = tl.arange(0, HEAD_DIM_PAD)
    slot = (rows * tl.num_programs(1) * GROUP + heads) * tl.num_programs(2) + tl.program_id(2)
    tl.store(part_out_ptr + slot[:, None] * HEAD_DIM + dims[None, :], acc,
             mask=row_ok[:, None] & (dims < HEAD_DIM)[None, :])
    tl.store(part_m_ptr + slot, m_i, mask=row_ok)
    tl.store(part_l_ptr + slot, l_i, mask=row_ok)


@triton.jit
def _reduce_splits_kernel(
    part_out_ptr, part_m_ptr, part_l_ptr, out_ptr, num_splits, stride_or, stride_oh,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """Combine one (row, head)'s partitions: weights 2^(m_s - max m), output sum(w acc) / sum(w l)."""
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    split_ok = splits < num_splits
    slots = (row * tl.num_programs(1) + head) * num_splits + splits
    m = tl.load(part_m_ptr + slots, mask=split_ok, other=float("-inf"))
    l = tl.load(part_l_ptr + slots, mask=split_ok, other=0.0)
    acc = tl.load(part_out_ptr + slots[:, None] * HEAD_DIM + dims[None, :],
                  mask=split_ok[:, None] & (dims < HEAD_DIM)[None, :], other=0.0)
    m_max = tl.max(m, 0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # empty partitions weigh 0
    total = tl.sum(w * l, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + row * stride_or + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)


class Partials:
    """fp32 buffers for the splits of `out` [rows, heads, head_dim]; `reduce` writes their combination to out."""

    def __init__(self, out: torch.Tensor, num_splits: int):
        rows, heads, head_dim = out.shape
        self.out, self.num_splits = out, num_splits
        acc = torch.empty(rows, heads, num_splits, head_dim, dtype=torch.float32, device=out.device)
        m = torch.empty(rows, heads, num_splits, dtype=torch.float32, device=out.device)
        self.buffers = acc, m, torch.empty_like(m)  # the kernels' part_out, part_m, part_l

    def reduce(self) -> torch.Tensor:
        rows, heads, head_dim = self.out.shape
        _reduce_splits_kernel[(rows, heads)](
            *self.buffers, self.out, self.num_splits, self.out.stride(0), self.out.stride(1),
            HEAD_DIM=head_dim, HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
            SPLITS_PAD=triton.next_power_of_2(self.num_splits), num_warps=NUM_WARPS, enable_fp_fusion=True,
        )
        return self.out


def num_splits(programs: int, span: int, num_sms: int) -> int:
    """Partitions per program: 1 when the programs already fill the SMs; else enough for about two programs per SM,
    each of at least MIN_PARTITION of the `span` keys a query may see, rounded down to a power of two (one
    reduction variant per power)."""
    programs = max(programs, 1)
    if programs >= num_sms:
        return 1
    wanted = min(-(-2 * num_sms // programs), span // MIN_PARTITION, MAX_SPLITS)
    return 1 << (max(wanted, 1).bit_length() - 1)


@functools.cache
def num_sms(device: torch.device) -> int:
    """SMs of a CUDA device; 1 elsewhere (the interpreter), where nothing is split unless asked."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
