"""The plain-torch paged attention against a dense softmax computation, over mixed decode/prefill batches."""

import pytest
import torch

from vlmserve.kernels.attention_ref import cross_attention, paged_attention, write_kv_cache
from vlmserve.kernels.step_inputs import CrossInputs, DeviceLens

BLOCK_SIZE = 4


def dense_causal_attention(q, k, v, scale, chunk_size=None):
    """q [q_len, heads, d] as the last q_len positions of k/v [seq_len, kv_heads, d]; GQA by repetition; with
    chunk_size, keys outside the query's chunk are hidden too."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    q_pos = torch.arange(k.shape[0] - q.shape[0], k.shape[0])[:, None]
    k_pos = torch.arange(k.shape[0])[None, :]
    hidden = k_pos > q_pos
    if chunk_size is not None:
        hidden |= k_pos // chunk_size != q_pos // chunk_size
    scores = scores.masked_fill(hidden, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("chunk_size", [None, 8])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize("q_lens,seq_lens", [([1, 1, 1], [1, 15, 17]), ([5, 1, 16], [5, 16, 33]), ([1, 3], [4, 3])])
def test_paged_attention_matches_dense_attention(heads, kv_heads, q_lens, seq_lens, chunk_size):
    generator = torch.Generator().manual_seed(sum(seq_lens) + heads)
    d, num_blocks = 8, 40
    k_cache = torch.zeros(num_blocks, BLOCK_SIZE, kv_heads, d)
    v_cache = torch.zeros_like(k_cache)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables, contexts, queries, slots = [], [], [], []
    for q_len, seq_len in zip(q_lens, seq_lens):
        table = [order.pop() for _ in range(-(-seq_len // BLOCK_SIZE))]
        k, v = torch.randn(2, seq_len, kv_heads, d, generator=generator)
        slots += [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(seq_len)]
        tables.append(table)
        contexts.append((k, v))
        queries.append(torch.randn(q_len, heads, d, generator=generator))
    write_kv_cache(torch.cat([k for k, _ in contexts]), torch.cat([v for _, v in contexts]), k_cache, v_cache,
                   torch.tensor(slots))
    width = max(map(len, tables))
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    starts = [0]
    for q_len in q_lens:
        starts.append(starts[-1] + q_len)
    lens = DeviceLens.build(seq_lens, starts, block_tables.device)
    out = paged_attention(torch.cat(queries), k_cache, v_cache, block_tables, lens, d**-0.5, chunk_size)
    expected = torch.cat([dense_causal_attention(q, k, v, d**-0.5, chunk_size)
                          for q, (k, v) in zip(queries, contexts)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_write_kv_cache_into_strided_pool_views():
    pool = torch.zeros(6, 3, 2, BLOCK_SIZE, 2, 4)  # [blocks, layers, k/v, block_size, kv_heads, d]
    k, v = torch.randn(2, 5, 2, 4)
    slots = torch.tensor([0, 5, 9, 22, 23])
    write_kv_cache(k, v, pool[:, 1, 0], pool[:, 1, 1], slots)
    flat_k = pool[:, 1, 0].reshape(-1, 2, 4)
    torch.testing.assert_close(flat_k[slots], k)
    torch.testing.assert_close(pool[:, 1, 1].reshape(-1, 2, 4)[slots], v)
    assert pool[:, 0].abs().sum() == 0 and pool[:, 2].abs().sum() == 0


def test_write_kv_cache_skips_negative_slots():
    k_cache, v_cache = torch.randn(2, 3, BLOCK_SIZE, 2, 4)
    before = k_cache.clone(), v_cache.clone()
    k, v = torch.randn(2, 3, 2, 4)
    write_kv_cache(k, v, k_cache, v_cache, torch.tensor([-1, 6, -1]))
    for cache, new, old in zip((k_cache, v_cache), (k, v), before):
        old[1, 2] = new[1]
        torch.testing.assert_close(cache, old, rtol=0, atol=0)


def test_cross_attention_matches_dense_masked_softmax():
    generator = torch.Generator().manual_seed(0)
    pool = torch.randn(200, 2, 8, generator=generator)
    q_lens, kv_lens = [3, 1, 4], [10, 7, 33]
    rows = torch.randperm(200, generator=generator)
    starts = torch.tensor([0] + kv_lens).cumsum(0).tolist()
    kv_rows = [{0: (rows[2 * a : 2 * a + n], rows[2 * a + n : 2 * a + 2 * n])} for a, n in zip(starts, kv_lens)]
    masks = [torch.rand(q_len, kv_len, generator=generator) < 0.5 for q_len, kv_len in zip(q_lens, kv_lens)]
    for mask in masks:
        mask[:, 0] = True
    query_start_loc = torch.tensor([0] + q_lens).cumsum(0).tolist()
    q = torch.randn(sum(q_lens), 8, 8, generator=generator)
    out = cross_attention(q, pool, CrossInputs.build(query_start_loc, kv_rows, masks)[0], 0.3)
    for i, (mask, (k_rows, v_rows)) in enumerate(zip(masks, (seq[0] for seq in kv_rows))):
        start, end = query_start_loc[i : i + 2]
        keys, values = (pool[r].repeat_interleave(4, dim=1) for r in (k_rows, v_rows))
        scores = torch.einsum("qhd,khd->hqk", q[start:end], keys) * 0.3
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        torch.testing.assert_close(out[start:end], torch.einsum("hqk,khd->qhd", probs, values), rtol=1e-5, atol=1e-5)
