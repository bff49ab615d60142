"""Triton paged attention over a flat batch of decodes and prefill chunks: the sequences with one new token go to
the decode kernel (split over long contexts), the others to the prefill kernel.

The fast twin of `attention_ref.paged_attention` (same arguments), reading the lengths as device tensors
(`DeviceLens`): nothing here syncs the host. A batch of decodes only (the CUDA-graph step) runs the decode kernel
alone, on q as it is.
"""

import torch

from vlmserve.kernels.decode_attention import paged_decode_attention
from vlmserve.kernels.prefill_attention import paged_prefill_attention
from vlmserve.kernels.step_inputs import DeviceLens


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    lens: DeviceLens,
    scale: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """q [T, heads, d], the new tokens of every sequence packed by lens.query_start_loc, over the paged caches
    [num_blocks, block_size, kv_heads, d] -> [T, heads, d]."""
    if lens.num_decodes == block_tables.shape[0]:
        return paged_decode_attention(q, k_cache, v_cache, block_tables, lens.seq_lens, scale, chunk_size)
    out = paged_prefill_attention(q, k_cache, v_cache, block_tables, lens.seq_lens, lens.query_start_loc, scale,
                                  chunk_size)
    if lens.num_decodes:
        seqs, rows = lens.decode_seqs, lens.decode_rows
        out[rows] = paged_decode_attention(q[rows], k_cache, v_cache, block_tables[seqs], lens.seq_lens[seqs], scale,
                                           chunk_size)
    return out
