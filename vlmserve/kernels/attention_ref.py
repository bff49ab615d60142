"""Plain-PyTorch attention over the paged KV cache and the vision K/V: the slow twin every fast kernel is tested against, and the CPU path."""

import torch
import torch.nn.functional as F

from vlmserve.kernels.step_inputs import CrossInputs, DeviceLens


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store new keys/values [T, kv_heads, head_dim] at their slots of the [blocks, block_size, ...] caches
    (which may be strided views of a larger pool). Rows with a negative slot (padding) are not stored."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = k[keep]
    v_cache[blocks, offsets] = v[keep]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    lens: DeviceLens,
    scale: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The Triton batch kernel's twin: causal attention of new queries [T, heads, head_dim], packed by
    lens.query_start_loc, over each sequence's cached context of lens.seq_lens tokens.

    The new tokens of a sequence are the last `q_len` of its `seq_len` context tokens. Sequences with one new
    token (decodes) are attended in one padded batch; longer ones (prefill chunks) one by one. With
    `chunk_size` (Llama 4's local layers) a query at position i sees only keys j <= i with j // C == i // C.
    The lengths are read back to the host here (a sync on a GPU: the reason CUDA graphs need Triton).
    """
    out = torch.empty_like(q)
    if lens.num_decodes:
        rows, seqs = lens.decode_rows, lens.decode_seqs
        out[rows] = paged_decode_attention(q[rows], k_cache, v_cache, block_tables[seqs], lens.seq_lens[seqs], scale,
                                           chunk_size)
    _prefill_rows(out, q, k_cache, v_cache, block_tables, lens.seq_lens.tolist(), lens.query_start_loc.tolist(),
                  scale, chunk_size)
    return out


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, scale: float, chunk_size: int | None = None, num_splits: int | None = None,
) -> torch.Tensor:
    """The Triton decode kernel's twin: q [B, heads, d], one query per sequence at its last position, over the
    paged caches -> [B, heads, d]. `num_splits` (how the kernel partitions long contexts) changes nothing here."""
    return _decode_attention(q, k_cache, v_cache, block_tables, seq_lens.tolist(), scale, chunk_size)


def paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, query_start_loc: torch.Tensor, scale: float, chunk_size: int | None = None,
) -> torch.Tensor:
    """The Triton prefill kernel's twin: the rows of the sequences with more than one new token, each over its
    whole context (cached prefix + new tokens) in the paged caches. The rows of single-token sequences are the
    decode kernel's: left unwritten."""
    out = torch.empty_like(q)
    _prefill_rows(out, q, k_cache, v_cache, block_tables, seq_lens.tolist(), query_start_loc.tolist(), scale,
                  chunk_size)
    return out


def _prefill_rows(out, q, k_cache, v_cache, block_tables, seq_lens: list[int], query_start_loc: list[int],
                  scale: float, chunk_size: int | None) -> None:
    """Fill `out`'s rows of each sequence with more than one new token, one sequence at a time."""
    for i in range(len(seq_lens)):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        if end - start < 2:
            continue
        keys, values = _gather_context(k_cache, v_cache, block_tables[i], seq_lens[i])
        mask = _causal_mask(end - start, seq_lens[i], q.device, chunk_size)
        out[start:end] = masked_attention(q[start:end], keys, values, mask, scale)


def _gather_context(k_cache, v_cache, block_table: torch.Tensor, seq_len: int):
    """One sequence's cached keys and values [seq_len, kv_heads, head_dim]."""
    blocks = block_table[: -(-seq_len // k_cache.shape[1])]
    return k_cache[blocks].flatten(0, 1)[:seq_len], v_cache[blocks].flatten(0, 1)[:seq_len]


def _decode_attention(q, k_cache, v_cache, block_tables, seq_lens: list[int], scale: float,
                      chunk_size: int | None = None) -> torch.Tensor:
    """q [B, heads, d], one query per sequence at its last position -> [B, heads, d]."""
    block_size = k_cache.shape[1]
    num_blocks = -(-max(seq_lens) // block_size)
    tables = block_tables[:, :num_blocks]
    keys = k_cache[tables].flatten(1, 2)  # [B, num_blocks * block_size, kv_heads, d]
    values = v_cache[tables].flatten(1, 2)
    lens = torch.tensor(seq_lens, device=q.device)
    key_pos = torch.arange(keys.shape[1], device=q.device)[None, :]
    mask = key_pos < lens[:, None]  # [B, L]
    if chunk_size is not None:
        mask &= key_pos >= (lens[:, None] - 1) // chunk_size * chunk_size
    out = F.scaled_dot_product_attention(
        q[:, :, None], keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask[:, None, None, :], scale=scale,
        enable_gqa=True,
    )
    return out[:, :, 0]


def _causal_mask(q_len: int, seq_len: int, device, chunk_size: int | None = None) -> torch.Tensor:
    query_pos = torch.arange(seq_len - q_len, seq_len, device=device)[:, None]
    key_pos = torch.arange(seq_len, device=device)[None, :]
    mask = key_pos <= query_pos  # [q_len, seq_len]
    if chunk_size is not None:
        mask &= key_pos // chunk_size == query_pos // chunk_size
    return mask


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q [q_len, heads, d] over k/v [kv_len, kv_heads, d] under a bool mask [q_len, kv_len]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.transpose(0, 1)


def cross_attention(q: torch.Tensor, kv_pool: torch.Tensor, inputs: CrossInputs, scale: float,
                    num_splits: int | None = None) -> torch.Tensor:
    """The Triton cross-attention kernel's twin: each sequence's query rows [q_len, heads, d] over its own vision
    K/V rows of the pool [rows, kv_heads, d] under its mask -> [R, heads, d]. `num_splits` changes nothing here."""
    out = torch.empty_like(q)
    q_loc, kv_loc, mask_loc = (t.tolist() for t in (inputs.query_start_loc, inputs.kv_start_loc, inputs.mask_start_loc))
    for s in range(len(q_loc) - 1):
        (q_start, q_end), (kv_start, kv_end) = q_loc[s : s + 2], kv_loc[s : s + 2]
        mask = inputs.mask[mask_loc[s] : mask_loc[s + 1]].view(q_end - q_start, kv_end - kv_start)
        out[q_start:q_end] = masked_attention(q[q_start:q_end], kv_pool[inputs.k_rows[kv_start:kv_end]],
                                              kv_pool[inputs.v_rows[kv_start:kv_end]], mask, scale)
    return out
