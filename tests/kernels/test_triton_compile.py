"""Every Triton kernel variant compiles for an H100 (sm_90) in bf16, here on the CPU: the interpreter runs kernels as
Python and accepts code the compiler rejects (types of loop-carried values, scalar branches, early returns).

The launchers run on CPU tensors with `JITFunction.run` replaced by an ahead-of-time compile that binds the arguments
with Triton's own binder, so the specialisation (16-byte alignment, divisibility) is what a launch on the GPU gets.
"""

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from vlmserve.kernels.step_inputs import CrossInputs

HOPPER = GPUTarget("cuda", 90, 32)
BLOCK_SIZE = 16


def compile_instead_of_launching(compiled: list):
    backend = make_backend(HOPPER)

    def run(self, *args, grid, warmup, **kwargs):
        bound, specialization, options = create_function_from_signature(self.signature, self.params, backend)(
            *args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        source = ASTSource(self, signature, constexprs, attrs)
        compiled.append((self.__name__, triton.compile(source, target=HOPPER, options=options.__dict__)))

    return run


def paged_inputs(heads, kv_heads, q_lens, seq_lens):
    """bf16 q sliced from a fused QKV, caches as strided views of a block-major pool, as the model runner has them."""
    width = -(-max(seq_lens) // BLOCK_SIZE)
    pool = torch.zeros(len(seq_lens) * width, 2, 2, BLOCK_SIZE, kv_heads, 128, dtype=torch.bfloat16)
    q = torch.zeros(sum(q_lens), heads + 2 * kv_heads, 128, dtype=torch.bfloat16)[:, :heads]
    tables = torch.arange(pool.shape[0]).view(len(seq_lens), width)
    starts = torch.tensor([0] + q_lens).cumsum(0)
    return q, pool[:, 1, 0], pool[:, 1, 1], tables, torch.tensor(seq_lens), starts


def cross_inputs(heads, q_lens):
    pool = torch.zeros(4 * 6404, 8, 128, dtype=torch.bfloat16)
    rows = [{0: (torch.arange(6404), torch.arange(6404, 2 * 6404))} for _ in q_lens]
    masks = [torch.ones(q_len, 6404, dtype=torch.bool) for q_len in q_lens]
    inputs = CrossInputs.build(torch.tensor([0] + q_lens).cumsum(0).tolist(), rows, masks)[0]
    return torch.zeros(sum(q_lens), heads, 128, dtype=torch.bfloat16), pool, inputs


@pytest.mark.parametrize("heads", [32, 40])  # Llama 3.2 11B (GQA 4), Llama 4 (GQA 5)
def test_kernels_compile_for_hopper_in_bf16(monkeypatch, heads):
    from vlmserve.kernels import decode_attention, kv_cache, prefill_attention, vision_attention

    compiled = []
    monkeypatch.setattr(JITFunction, "run", compile_instead_of_launching(compiled))
    q, k_cache, v_cache, tables, lens, starts = paged_inputs(heads, 8, [1, 1], [40, 5000])
    decode_attention.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.1)
    decode_attention.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.1, chunk_size=8192, num_splits=4)
    q, k_cache, v_cache, tables, lens, starts = paged_inputs(heads, 8, [30, 300], [40, 5000])
    prefill_attention.paged_prefill_attention(q, k_cache, v_cache, tables, lens, starts, 0.1)
    prefill_attention.paged_prefill_attention(q, k_cache, v_cache, tables, lens, starts, 0.1, chunk_size=8192)
    kv_cache.write_kv_cache(q[:, 8:16], q[:, 16:24], k_cache, v_cache, torch.arange(330))
    vision_attention.cross_attention(*cross_inputs(heads, [3, 40]), 0.1)
    vision_attention.cross_attention(*cross_inputs(heads, [1, 1]), 0.1, num_splits=8)
    assert [name for name, _ in compiled] == [
        "_paged_decode_kernel", "_paged_decode_kernel", "_reduce_splits_kernel", "_paged_prefill_kernel",
        "_paged_prefill_kernel", "_write_kv_cache_kernel", "_cross_attention_kernel", "_cross_attention_kernel",
        "_reduce_splits_kernel"]
    assert all(kernel.asm.get("cubin") for _, kernel in compiled)
