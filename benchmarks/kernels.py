"""Time the Triton attention kernels against their torch twins and torch SDPA at Llama-3.2-11B-like shapes.

32 query heads, 8 KV heads, head_dim 128, bf16, block size 16, shuffled blocks. Each row gives our median time,
the bytes it must move (or the FLOPs it must do) over that time, that figure as a share of the device-to-device
copy bandwidth (or bf16 matmul rate) measured in the same run, then each peer's time and peer / ours. Every
output is checked against the bf16 twin (relative Frobenius error) before it is timed. Needs a CUDA GPU.

    .venv/bin/python benchmarks/kernels.py                       # everything, a few minutes
    .venv/bin/python benchmarks/kernels.py --only decode --batches 1 64 --contexts 32768
"""

import argparse
import sys

import torch
import torch.nn.functional as F

from vlmserve import kernels
from vlmserve.kernels import attention_ref
from vlmserve.kernels.step_inputs import CrossInputs

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
VISION_TOKENS = 4 * 1601  # one 4-tile image of Llama 3.2 Vision
SCALE = HEAD_DIM**-0.5


def bench(fn) -> float:
    """Median milliseconds of fn over ~200 ms of runs, L2 flushed before each (triton.testing.do_bench)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def attempt(fn):
    """fn(), or the name of what it raised: the twins gather whole contexts and may run out of memory, and SDPA
    may have no backend for a mask with GQA."""
    try:
        return fn()
    except (RuntimeError, NotImplementedError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        torch.cuda.empty_cache()
        return type(error).__name__


def timed_peer(fn) -> float | str:
    return attempt(lambda: bench(fn))


def rel_err(ours, twin) -> float | str:
    """||ours - twin|| / ||twin|| over the outputs of the two callables."""
    def compute():
        actual, expected = ours().float(), twin().float()
        return ((actual - expected).norm() / expected.norm()).item()
    return attempt(compute)


def ceilings() -> tuple[float, float]:
    """Measured device-to-device copy bandwidth (bytes read + written, GB/s) and bf16 matmul rate (TFLOP/s)."""
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() * 4 / bench(lambda: dst.copy_(src)) / 1e6
    a, b = torch.randn(2, 8192, 8192, device="cuda", dtype=DTYPE)
    matmul_tflops = 2 * 8192**3 / bench(lambda: a @ b) / 1e9
    return copy_gbs, matmul_tflops


def paged_cache(num_seqs: int, context: int):
    """K/V caches as strided views of a block-major pool [blocks, 1 layer, k/v, block_size, kv_heads, d] with each
    sequence's blocks shuffled over it, and the block tables."""
    blocks_per_seq = -(-context // BLOCK_SIZE)
    pool = torch.randn(num_seqs * blocks_per_seq, 1, 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    tables = torch.randperm(pool.shape[0], device="cuda").view(num_seqs, blocks_per_seq)
    return pool[:, 0, 0], pool[:, 0, 1], tables


def dense_kv(k_cache, v_cache, tables, context: int):
    """The same contexts contiguous [B, kv_heads, context, d]: what SDPA reads, made before timing."""
    return [cache[tables].flatten(1, 2)[:, :context].transpose(1, 2).contiguous() for cache in (k_cache, v_cache)]


def decode_rows(batches, contexts, copy_gbs, _):
    for context in contexts:
        for batch in batches:
            k_cache, v_cache, tables = paged_cache(batch, context)
            q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
            lens = torch.full((batch,), context, device="cuda", dtype=torch.int64)
            err = rel_err(lambda: kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, SCALE),
                          lambda: attention_ref.paged_decode_attention(q, k_cache, v_cache, tables, lens, SCALE))
            ours = bench(lambda: kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, SCALE))
            unsplit = bench(lambda: kernels.paged_decode_attention(q, k_cache, v_cache, tables, lens, SCALE, None, 1))
            twin = timed_peer(lambda: attention_ref.paged_decode_attention(q, k_cache, v_cache, tables, lens, SCALE))
            k, v = dense_kv(k_cache, v_cache, tables, context)
            sdpa = timed_peer(lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, scale=SCALE, enable_gqa=True))
            del k, v
            gb = 2 * batch * context * KV_HEADS * HEAD_DIM * DTYPE.itemsize / 1e9
            yield (f"decode b={batch} ctx={context}", ours, f"{gb / ours * 1e3:7.0f} GB/s",
                   gb / ours * 1e3 / copy_gbs, {"no split": unsplit, "twin": twin, "SDPA dense": sdpa}, err)


def prefill_rows(batches, contexts, _, matmul_tflops):
    """Fresh prompts (q_len = context, SDPA causal on contiguous K/V as the peer) and 2048-token chunks after a
    cached prefix (SDPA with a lower-right causal mask)."""
    from torch.nn.attention.bias import causal_lower_right

    cases = [(b, c, c) for c in contexts for b in batches if b * c <= 32768]
    cases += [(1, 2048, c) for c in contexts if c > 2048]
    for batch, q_len, context in cases:
        k_cache, v_cache, tables = paged_cache(batch, context)
        q = torch.randn(batch * q_len, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        lens = torch.full((batch,), context, device="cuda", dtype=torch.int64)
        starts = torch.arange(batch + 1, device="cuda") * q_len
        err = rel_err(lambda: kernels.paged_prefill_attention(q, k_cache, v_cache, tables, lens, starts, SCALE),
                      lambda: attention_ref.paged_prefill_attention(q, k_cache, v_cache, tables, lens, starts, SCALE))
        ours = bench(lambda: kernels.paged_prefill_attention(q, k_cache, v_cache, tables, lens, starts, SCALE))
        twin = timed_peer(lambda: attention_ref.paged_prefill_attention(q, k_cache, v_cache, tables, lens, starts,
                                                                        SCALE))
        k, v = dense_kv(k_cache, v_cache, tables, context)
        q_dense = q.view(batch, q_len, HEADS, HEAD_DIM).transpose(1, 2)
        causal = {"is_causal": True} if q_len == context else {"attn_mask": causal_lower_right(q_len, context)}
        sdpa = timed_peer(lambda: F.scaled_dot_product_attention(q_dense, k, v, scale=SCALE, enable_gqa=True,
                                                                 **causal))
        del k, v
        tflop = 4 * batch * q_len * (context - q_len + (q_len + 1) / 2) * HEADS * HEAD_DIM / 1e12
        yield (f"prefill b={batch} q={q_len} ctx={context}", ours, f"{tflop / ours * 1e3:7.0f} TFLOP/s",
               tflop / ours * 1e3 / matmul_tflops, {"twin": twin, "SDPA dense": sdpa}, err)


def write_rows(batches, contexts, copy_gbs, _):
    for num_tokens in sorted({*batches, 8192}):
        k_cache, v_cache, _ = paged_cache(1, num_tokens * 2)
        k, v = torch.randn(2, num_tokens, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        slots = torch.randperm(num_tokens * 2, device="cuda")[:num_tokens]
        written = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
        kernels.write_kv_cache(k, v, *written[0], slots)
        attention_ref.write_kv_cache(k, v, *written[1], slots)
        err = rel_err(lambda: torch.stack(written[0]), lambda: torch.stack(written[1]))
        ours = bench(lambda: kernels.write_kv_cache(k, v, k_cache, v_cache, slots))
        twin = bench(lambda: attention_ref.write_kv_cache(k, v, k_cache, v_cache, slots))
        gb = 2 * 2 * num_tokens * KV_HEADS * HEAD_DIM * DTYPE.itemsize / 1e9  # K and V, read and written
        yield (f"write tokens={num_tokens}", ours, f"{gb / ours * 1e3:7.0f} GB/s", gb / ours * 1e3 / copy_gbs,
               {"twin": twin}, err)


def cross_rows(batches, contexts, copy_gbs, _):
    """Each sequence cross-attends to one 4-tile image, 3 tiles real: B decode rows, then one 1024-row prefill.
    The SDPA peer reads padded K/V copies made beforehand (what this kernel avoids making)."""
    for num_seqs, q_len in [(b, 1) for b in batches] + [(1, 1024)]:
        pool = torch.randn(2 * num_seqs * VISION_TOKENS + 64, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        rows = torch.randperm(pool.shape[0], device="cuda")[: 2 * num_seqs * VISION_TOKENS].view(num_seqs, 2, -1)
        mask = (torch.arange(VISION_TOKENS, device="cuda") < 3 * 1601).expand(q_len, -1).contiguous()
        inputs = CrossInputs.build(list(range(0, (num_seqs + 1) * q_len, q_len)),
                                   [{0: (seq[0], seq[1])} for seq in rows], [mask] * num_seqs)[0]
        q = torch.randn(num_seqs * q_len, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        err = rel_err(lambda: kernels.cross_attention(q, pool, inputs, SCALE),
                      lambda: attention_ref.cross_attention(q, pool, inputs, SCALE))
        ours = bench(lambda: kernels.cross_attention(q, pool, inputs, SCALE))
        twin = timed_peer(lambda: attention_ref.cross_attention(q, pool, inputs, SCALE))
        k, v = (pool[rows[:, i]].transpose(1, 2).contiguous() for i in (0, 1))  # [B, kv_heads, V, d]
        q_dense = q.view(num_seqs, q_len, HEADS, HEAD_DIM).transpose(1, 2)
        sdpa = timed_peer(lambda: F.scaled_dot_product_attention(q_dense, k, v, attn_mask=mask, scale=SCALE,
                                                                 enable_gqa=True))
        del k, v
        gb = 2 * num_seqs * 3 * 1601 * KV_HEADS * HEAD_DIM * DTYPE.itemsize / 1e9  # the real tiles' K and V
        yield (f"cross seqs={num_seqs} q={q_len}", ours, f"{gb / ours * 1e3:7.0f} GB/s", gb / ours * 1e3 / copy_gbs,
               {"twin": twin, "SDPA padded": sdpa}, err)


BENCHES = {"decode": decode_rows, "prefill": prefill_rows, "write": write_rows, "cross": cross_rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    parser.add_argument("--only", choices=sorted(BENCHES), nargs="+", default=list(BENCHES))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py times the Triton kernels on a CUDA GPU, and this machine has none. "
              "Their correctness on CPU is tested by tests/kernels (Triton interpreter, fp32).")
        return 0
    copy_gbs, matmul_tflops = ceilings()
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbs:.0f} GB/s (read + write), bf16 matmul "
          f"{matmul_tflops:.0f} TFLOP/s")
    print(f"{'case':34} {'ours ms':>9} {'rate':>16} {'of ceiling':>10} {'rel err':>8}  peers: ms (peer / ours)")
    for name in args.only:
        for case, ours, rate, share, peers, err in BENCHES[name](args.batches, args.contexts, copy_gbs,
                                                               matmul_tflops):
            peer_text = "  ".join(f"{peer} {ms:.3f} ({ms / ours:.2f}x)" if isinstance(ms, float) else f"{peer} {ms}"
                                  for peer, ms in peers.items())
            err_text = f"{err:8.1e}" if isinstance(err, float) else err
            print(f"{case:34} {ours:9.3f} {rate:>16} {share:10.0%} {err_text:>8}  {peer_text}", flush=True)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
