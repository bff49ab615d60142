"""The Triton kernels against their torch twins, run by the Triton interpreter on CPU in fp32 (bf16 tl.dot is
wrong in the interpreter, triton#11584; bf16 is checked on the GPU by benchmarks/kernels.py).

TRITON_INTERPRET=1 must be set before Triton is first imported, and other test modules may import it earlier, so
each kernel's cases run in a subprocess: this file run as a script with the kernel's name.
"""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from vlmserve import kernels
from vlmserve.kernels import attention_ref
from vlmserve.kernels.step_inputs import CrossInputs, DeviceLens

BLOCK_SIZE = 16
CONTEXTS = [1, 15, 16, 17, 1000]
SHAPES = [(4, 4, 16), (8, 2, 32), (8, 1, 24)]  # (heads, kv_heads, head_dim): GQA 1, 4, 8; 24 pads to 32


def paged_batch(heads, kv_heads, head_dim, q_lens, seq_lens, seed):
    """Random q (a strided slice of a fused QKV), caches as strided views of a block-major pool, shuffled distinct
    blocks in a strided block table padded with other blocks' ids; query_start_loc from q_lens."""
    gen = torch.Generator().manual_seed(seed)
    width = -(-max(seq_lens) // BLOCK_SIZE) + 1
    num_blocks = len(seq_lens) * width + 3
    pool = torch.randn(num_blocks, 3, 2, BLOCK_SIZE, kv_heads, head_dim, generator=gen)
    wide = torch.randint(0, num_blocks, (len(seq_lens), 2 * width), generator=gen)
    wide[:, ::2] = torch.randperm(num_blocks, generator=gen)[: len(seq_lens) * width].view(len(seq_lens), width)
    q = torch.randn(sum(q_lens), heads + 2 * kv_heads, head_dim, generator=gen)[:, :heads]
    query_start_loc = torch.tensor([0] + q_lens).cumsum(0)
    return q, pool[:, 1, 0], pool[:, 1, 1], wide[:, ::2], torch.tensor(seq_lens), query_start_loc, head_dim**-0.5


def cross_batch(heads, kv_heads, head_dim, q_lens, kv_lens, seed):
    """Random q rows, a pool of K/V rows with each sequence's rows shuffled, and masks from `meta_style_mask`."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(2 * sum(kv_lens) + 7, kv_heads, head_dim, generator=gen)
    rows = torch.randperm(pool.shape[0], generator=gen)
    kv_rows, masks, used = [], [], 0
    for q_len, kv_len in zip(q_lens, kv_lens):
        kv_rows.append({5: (rows[used : used + kv_len], rows[used + kv_len : used + 2 * kv_len])})
        used += 2 * kv_len
        masks.append(meta_style_mask(q_len, kv_len))
    q = torch.randn(sum(q_lens), heads + 2 * kv_heads, head_dim, generator=gen)[:, :heads]
    query_start_loc = torch.tensor([0] + q_lens).cumsum(0).tolist()
    return q, pool, CrossInputs.build(query_start_loc, kv_rows, masks)[5], head_dim**-0.5


def meta_style_mask(q_len, kv_len):
    """[q_len, kv_len]: kv_len split into 3 'images' of 4 'tiles', with 1, 3 and 2 real tiles; row i sees the images
    from i * 3 // q_len on, their real tiles only (Meta's rule). The first row of a sequence of 15 rows or more sees
    everything (a transformers-rule text row). Whole tiles of padding go unseen by every row of a block."""
    tile = max(kv_len // 12, 1)
    col = torch.arange(kv_len)
    image = (col // (4 * tile)).clamp(max=2)
    real = (col % (4 * tile) < torch.tensor([1, 3, 2])[image] * tile) | (kv_len < 12)
    mask = (image[None, :] >= torch.arange(q_len)[:, None] * 3 // q_len) & real[None, :]
    mask[0] |= q_len >= 15
    return mask


# Per GQA ratio, (chunk_size, num_splits): split-K off and on, local attention off and on.
DECODE_VARIANTS = [[(None, 1), (16, 4), (8, 3)], [(None, 1), (16, 4), (None, None)], [(None, 4), (16, 1), (8, 2)]]


def decode_cases(triton_decode):
    for seed, ((heads, kv_heads, head_dim), variants) in enumerate(zip(SHAPES, DECODE_VARIANTS)):
        args = paged_batch(heads, kv_heads, head_dim, [1] * len(CONTEXTS), CONTEXTS, seed)
        q, k_cache, v_cache, tables, lens, _, scale = args
        for chunk_size, num_splits in variants:
            yield (f"decode h={heads} kv={kv_heads} d={head_dim} chunk={chunk_size} splits={num_splits}",
                   triton_decode(q, k_cache, v_cache, tables, lens, scale, chunk_size, num_splits),
                   attention_ref.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, chunk_size))


PREFILL_Q_LENS = [15, 16, 17, 1, 17, 3, 40]
PREFILL_SEQ_LENS = [15, 16, 17, 17, 33, 1000, 1000]  # fresh prompts, a decode (skipped), prefix hits


def prefill_cases(triton_prefill):
    prefill_rows = torch.cat([torch.arange(start, start + n) for start, n in
                              zip(torch.tensor([0] + PREFILL_Q_LENS).cumsum(0).tolist(), PREFILL_Q_LENS) if n > 1])
    for seed, ((heads, kv_heads, head_dim), chunk_sizes) in enumerate(zip(SHAPES, [[None, 8], [None, 16], [16]])):
        args = paged_batch(heads, kv_heads, head_dim, PREFILL_Q_LENS, PREFILL_SEQ_LENS, seed)
        for chunk_size in chunk_sizes:
            yield (f"prefill h={heads} kv={kv_heads} d={head_dim} chunk={chunk_size}",
                   triton_prefill(*args, chunk_size)[prefill_rows],
                   attention_ref.paged_prefill_attention(*args, chunk_size)[prefill_rows])
    args = paged_batch(2, 2, 16, [1000], [1000], seed=9)  # one long fresh prompt: 8 query blocks
    yield "prefill 1000-token prompt", triton_prefill(*args), attention_ref.paged_prefill_attention(*args)


def batch_cases(triton_batch):
    gen = torch.Generator().manual_seed(5)
    seq_lens = torch.randint(1, 300, (6,), generator=gen).tolist()
    q_lens = [1 if i % 2 else int(torch.randint(1, n + 1, (), generator=gen)) for i, n in enumerate(seq_lens)]
    batches = {"mixed": ([1, 17, 1, 5, 1], [1000, 33, 16, 15, 17]), "decodes only": ([1, 1, 1], [15, 1000, 17]),
               "prefills only": ([15, 16], [15, 40]), f"random {q_lens} of {seq_lens}": (q_lens, seq_lens)}
    for seed, (name, (q_lens, seq_lens)) in enumerate(batches.items()):
        q, k_cache, v_cache, tables, _, _, scale = paged_batch(10, 2, 16, q_lens, seq_lens, seed)  # GQA 5: Llama 4
        query_start_loc = torch.tensor([0] + q_lens).cumsum(0).tolist()
        lens = DeviceLens.build(seq_lens, query_start_loc, q.device)
        for chunk_size in [None, 16]:
            yield (f"batch {name} chunk={chunk_size}",
                   triton_batch(q, k_cache, v_cache, tables, lens, scale, chunk_size),
                   attention_ref.paged_attention(q, k_cache, v_cache, tables, lens, scale, chunk_size))


def cross_cases(triton_cross):
    """Per GQA ratio, rows of prefill chunks and of decodes (one per sequence), split over the vision tokens or not."""
    variants = [[([1, 15, 3, 17, 3], 1), ([1] * 5, 4)], [([1, 15, 3, 17, 3], 3), ([1] * 5, 1)],
                [([1, 15, 3, 17, 3], 1), ([1] * 5, 4)]]
    for seed, ((heads, kv_heads, head_dim), cases) in enumerate(zip(SHAPES, variants)):
        for q_lens, num_splits in cases:
            args = cross_batch(heads, kv_heads, head_dim, q_lens, CONTEXTS, seed)
            yield (f"cross h={heads} kv={kv_heads} d={head_dim} rows={q_lens} splits={num_splits}",
                   triton_cross(*args, num_splits), attention_ref.cross_attention(*args))


def write_cases(triton_write):
    gen = torch.Generator().manual_seed(0)
    for kv_heads, head_dim in [(1, 16), (2, 24), (8, 32)]:
        num_tokens = 40
        kv = torch.randn(num_tokens, 3, kv_heads, head_dim, generator=gen)  # k and v: strided slices
        slots = torch.randperm(6 * BLOCK_SIZE, generator=gen)[:num_tokens]
        slots[::7] = -1  # padding rows: not written
        pool = torch.randn(12, 3, 2, BLOCK_SIZE, kv_heads, head_dim, generator=gen)
        pools = [pool, pool.clone()]
        for pool, write in zip(pools, (triton_write, attention_ref.write_kv_cache)):
            write(kv[:, 0], kv[:, 2], pool[:6, 1, 0], pool[:6, 1, 1], slots)  # blocks 6.. must stay as they are
        yield f"write kv_heads={kv_heads} d={head_dim}", pools[0], pools[1]


def check_launchers(launchers):
    """Each launcher rejects what its kernel cannot read."""
    q, k_cache, v_cache, tables, lens, query_start_loc, scale = paged_batch(4, 2, 16, [1, 1], [5, 20], seed=99)
    strided_cache = k_cache.repeat_interleave(2, -1)[..., ::2]
    q_rows, pool, inputs, _ = cross_batch(4, 2, 16, [2], [20], seed=1)
    float_mask = dataclasses.replace(inputs, mask=inputs.mask.float())
    bad_calls = {
        "decode: strided head dim": lambda: launchers["decode"](q, strided_cache, v_cache, tables, lens, scale),
        "decode: dtype mismatch": lambda: launchers["decode"](q.double(), k_cache, v_cache, tables, lens, scale),
        "decode: float seq_lens": lambda: launchers["decode"](q, k_cache, v_cache, tables, lens.float(), scale),
        "decode: heads not a multiple of kv_heads": lambda: launchers["decode"](q[:, :3], k_cache, v_cache, tables,
                                                                              lens, scale),
        "prefill: query_start_loc length": lambda: launchers["prefill"](q, k_cache, v_cache, tables, lens,
                                                                      query_start_loc[:-1], scale),
        "write: strided head dim": lambda: launchers["write"](q[:, :2, :16], q[:, :2, :16], strided_cache, v_cache,
                                                            lens),
        "cross: float mask": lambda: launchers["cross"](q_rows, pool, float_mask, scale),
    }
    for name, call in bad_calls.items():
        try:
            call()
        except AssertionError:
            print(f"rejects {name}", flush=True)
        else:
            raise AssertionError(f"launcher accepted {name}")


def run_interpreter_cases(kernel: str) -> None:
    """Every case of one kernel, in this process; prints one line per case, raises on a mismatch."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from vlmserve.kernels import batch_attention, decode_attention, kv_cache, prefill_attention, vision_attention

    launchers = {"decode": decode_attention.paged_decode_attention,
                 "prefill": prefill_attention.paged_prefill_attention, "batch": batch_attention.paged_attention,
                 "cross": vision_attention.cross_attention, "write": kv_cache.write_kv_cache}
    cases = {"decode": decode_cases, "prefill": prefill_cases, "batch": batch_cases, "cross": cross_cases,
             "write": write_cases}
    for name, actual, expected in cases[kernel](launchers[kernel]):
        err = (actual - expected).abs().max().item()
        print(f"{name}: max_err={err:.2e}", flush=True)
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=2e-5)
    if kernel == "write":  # the shortest run: the launcher checks join it
        check_launchers(launchers)
    print("ALL OK", flush=True)


@pytest.mark.parametrize("kernel", ["decode", "prefill", "batch", "cross", "write"])
def test_triton_kernel_matches_twin_under_interpreter(kernel):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, __file__, kernel], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout + result.stderr


def test_dispatchers_run_the_twins_on_cpu(monkeypatch):
    monkeypatch.setattr(kernels, "_triton_module", lambda name: pytest.fail(f"asked for Triton's {name} on CPU"))
    q, k_cache, v_cache, tables, lens, query_start_loc, scale = paged_batch(8, 2, 16, [1, 5, 1], [17, 40, 1], seed=7)
    seq_lens, starts = lens.tolist(), query_start_loc.tolist()
    device_lens = DeviceLens.build(seq_lens, starts, q.device)
    decode_rows = [0, 6]
    same = {
        "paged_attention": (kernels.paged_attention(q, k_cache, v_cache, tables, device_lens, scale, 16),
                            attention_ref.paged_attention(q, k_cache, v_cache, tables, device_lens, scale, 16)),
        "paged_decode_attention": (
            kernels.paged_decode_attention(q[decode_rows], k_cache, v_cache, tables[[0, 2]], lens[[0, 2]], scale),
            attention_ref.paged_decode_attention(q[decode_rows], k_cache, v_cache, tables[[0, 2]], lens[[0, 2]],
                                                 scale)),
        "paged_prefill_attention": (
            kernels.paged_prefill_attention(q, k_cache, v_cache, tables, lens, query_start_loc, scale)[1:6],
            attention_ref.paged_prefill_attention(q, k_cache, v_cache, tables, lens, query_start_loc, scale)[1:6]),
        "cross_attention": (kernels.cross_attention(*cross_batch(8, 2, 16, [3, 1], [17, 40], seed=2)),
                            attention_ref.cross_attention(*cross_batch(8, 2, 16, [3, 1], [17, 40], seed=2))),
    }
    for name, (actual, expected) in same.items():
        assert torch.equal(actual, expected), name
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
    slots = torch.tensor([3, -1, 40, 41, 42, 7, 9])
    kernels.write_kv_cache(q[:, :2], q[:, 2:4], *caches[0], slots)
    attention_ref.write_kv_cache(q[:, :2], q[:, 2:4], *caches[1], slots)
    assert all(torch.equal(a, b) for a, b in zip(*caches))


def test_split_heuristic_fills_the_sms_only_when_programs_do_not():
    from vlmserve.kernels.split_k import num_splits

    assert num_splits(programs=64 * 8, span=32768, num_sms=132) == 1  # batch 64 x 8 KV heads fill them already
    assert num_splits(programs=1 * 8, span=32768, num_sms=132) == 32  # 33 wanted: 1024-token partitions
    assert num_splits(programs=8 * 8, span=8192, num_sms=132) == 4
    assert num_splits(programs=1 * 8, span=1024, num_sms=132) == 2  # partitions of at least 512 keys
    assert num_splits(programs=1 * 8, span=300, num_sms=132) == 1
    assert num_splits(programs=1, span=1 << 20, num_sms=132) == 64  # capped


if __name__ == "__main__":
    run_interpreter_cases(sys.argv[1])
