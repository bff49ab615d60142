"""Plain-PyTorch attention over the paged KV cache and the vision K/V: the slow twin every fast kernel is tested against, and the CPU path."""

import torch
import torch.nn.functional as F


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store new keys/values [T, kv_heads, head_dim] at their slots of the [blocks, block_size, ...] caches
    (which may be strided views of a larger pool)."""
    block_size = k_cache.shape[1]
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    k_cache[blocks, offsets] = k
    v_cache[blocks, offsets] = v


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: list[int],
    query_start_loc: list[int],
    scale: float,
) -> torch.Tensor:
    """Causal attention of new queries [T, heads, head_dim] over each sequence's cached context.

    The new tokens of a sequence are the last `q_len` of its `seq_len` context tokens.
    """
    block_size = k_cache.shape[1]
    out = torch.empty_like(q)
    for i, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        num_blocks = -(-seq_len // block_size)
        blocks = block_tables[i, :num_blocks]
        keys = k_cache[blocks].flatten(0, 1)[:seq_len]  # [seq_len, kv_heads, head_dim]
        values = v_cache[blocks].flatten(0, 1)[:seq_len]
        q_len = end - start
        mask = _causal_mask(q_len, seq_len, q.device)
        out[start:end] = masked_attention(q[start:end], keys, values, mask, scale)
    return out


def _causal_mask(q_len: int, seq_len: int, device) -> torch.Tensor:
    query_pos = torch.arange(seq_len - q_len, seq_len, device=device)[:, None]
    return torch.arange(seq_len, device=device)[None, :] <= query_pos  # [q_len, seq_len]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q [q_len, heads, d] over k/v [kv_len, kv_heads, d] under a bool mask [q_len, kv_len]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.transpose(0, 1)
