"""The Triton paged decode kernel against its torch twin, run by the Triton interpreter on CPU.

TRITON_INTERPRET=1 must be set before Triton is first imported, and other test modules may import it earlier,
so all interpreter cases run in one subprocess: this file run as a script.
"""

import os
import subprocess
import sys

import torch

from vlmserve.kernels import paged_decode_attention, paged_decode_attention_ref

BLOCK_SIZE = 16
SEQ_LENS = [1, 15, 16, 17, 1000]


def make_case(heads, kv_heads, head_dim, seq_lens, seed, dtype=torch.float32):
    """Random q, caches as strided views of a block-major pool, shuffled block tables (a strided view too)."""
    gen = torch.Generator().manual_seed(seed)
    max_blocks = -(-max(seq_lens) // BLOCK_SIZE) + 2
    num_blocks = len(seq_lens) * max_blocks + 3
    pool = torch.randn(num_blocks, 3, 2, BLOCK_SIZE, kv_heads, head_dim, generator=gen, dtype=dtype)
    k_cache, v_cache = pool[:, 1, 0], pool[:, 1, 1]
    wide = torch.randint(0, num_blocks, (len(seq_lens), 2 * max_blocks), generator=gen, dtype=torch.int32)
    wide[:, ::2] = torch.randperm(num_blocks, generator=gen)[: len(seq_lens) * max_blocks].view(len(seq_lens), -1)
    block_tables = wide[:, ::2]  # distinct, shuffled blocks; stride 2 along the table
    qkv = torch.randn(len(seq_lens), heads + 2 * kv_heads, head_dim, generator=gen, dtype=dtype)
    q = qkv[:, :heads]  # non-contiguous over the batch, as split from a fused QKV projection
    seq_lens = torch.tensor(seq_lens, dtype=torch.int32)
    return q, k_cache, v_cache, block_tables, seq_lens, head_dim**-0.5


def run_interpreter_cases():
    """Every interpreter case in this one process; prints one line per case, raises on a mismatch."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from vlmserve.kernels.paged_attention import paged_decode_attention as triton_decode

    cases = [(4, 4, 16, SEQ_LENS), (8, 2, 32, SEQ_LENS), (8, 1, 24, SEQ_LENS), (16, 2, 16, [33, 64, 65, 129])]
    for seed, (heads, kv_heads, head_dim, seq_lens) in enumerate(cases):
        args = make_case(heads, kv_heads, head_dim, seq_lens, seed)
        expected = paged_decode_attention_ref(*args)
        actual = triton_decode(*args)
        err = (actual - expected).abs().max().item()
        print(f"heads={heads} kv_heads={kv_heads} d={head_dim} lens={seq_lens} max_err={err:.2e}", flush=True)
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=2e-5)

    q, k_cache, v_cache, tables, lens, scale = make_case(4, 2, 16, [5, 20], seed=99)
    bad_inputs = {
        "strided head dim": (q, k_cache.repeat_interleave(2, -1)[..., ::2], v_cache, tables, lens, scale),
        "dtype mismatch": (q.double(), k_cache, v_cache, tables, lens, scale),
        "float seq_lens": (q, k_cache, v_cache, tables, lens.float(), scale),
        "heads not a multiple of kv_heads": (q[:, :3], k_cache, v_cache, tables, lens, scale),
    }
    for name, bad in bad_inputs.items():
        try:
            triton_decode(*bad)
        except AssertionError:
            print(f"rejected: {name}", flush=True)
        else:
            raise AssertionError(f"launcher accepted {name}")
    print("ALL OK", flush=True)


def test_triton_kernel_matches_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout + result.stderr


def test_dispatcher_uses_reference_on_cpu():
    args = make_case(8, 2, 16, [1, 17, 40], seed=7)
    torch.testing.assert_close(paged_decode_attention(*args), paged_decode_attention_ref(*args), atol=0, rtol=0)


def test_reference_matches_dense_softmax():
    """The twin itself, against a dense per-sequence softmax over the gathered context (GQA by repetition)."""
    q, k_cache, v_cache, tables, lens, scale = make_case(8, 2, 16, [1, 16, 17, 50], seed=3)
    out = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, scale)
    for i, seq_len in enumerate(lens.tolist()):
        slots = torch.arange(seq_len)
        keys = k_cache[tables[i, slots // BLOCK_SIZE], slots % BLOCK_SIZE].repeat_interleave(4, dim=1)
        values = v_cache[tables[i, slots // BLOCK_SIZE], slots % BLOCK_SIZE].repeat_interleave(4, dim=1)
        probs = (torch.einsum("hd,khd->hk", q[i], keys) * scale).softmax(-1)
        torch.testing.assert_close(out[i], torch.einsum("hk,khd->hd", probs, values), atol=1e-5, rtol=1e-5)


if __name__ == "__main__":
    run_interpreter_cases()
