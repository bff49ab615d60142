"""The grouped MoE layer against a dense all-experts computation and against transformers' Llama4TextMoe."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Llama4TextConfig
from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

from tests.helpers import relative_error
from vlmserve.layers.moe import Experts, MoE

HIDDEN, INTERMEDIATE = 32, 24


def random_moe(num_experts: int, top_k: int, seed: int = 0) -> MoE:
    generator = torch.Generator().manual_seed(seed)
    moe = MoE(HIDDEN, INTERMEDIATE, num_experts, top_k)
    with torch.no_grad():
        for param in moe.parameters():
            fan_in = param.shape[1] if param.dim() == 3 else param.shape[-1]
            param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
    return moe


def dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by sigmoid(logit) on its input where it is among the top k, else 0."""
    logits = moe.router(x)  # [T, E]
    chosen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, logits.topk(moe.top_k, dim=-1).indices, True)
    scores = torch.where(chosen, torch.sigmoid(logits), torch.zeros_like(logits))
    out = moe.shared_expert(x)
    for e in range(logits.shape[1]):
        gate, up = (x * scores[:, e : e + 1] @ moe.experts.gate_up_proj[e]).chunk(2, dim=-1)
        out = out + (F.silu(gate) * up) @ moe.experts.down_proj[e]
    return out


@pytest.mark.parametrize("num_experts,top_k", [(4, 1), (6, 2), (5, 5), (16, 1)])
@pytest.mark.parametrize("num_tokens", [1, 3, 40])
def test_grouped_experts_match_dense_computation(num_experts, top_k, num_tokens):
    moe = random_moe(num_experts, top_k, seed=num_experts + top_k)
    x = torch.randn(num_tokens, HIDDEN, generator=torch.Generator().manual_seed(num_tokens))
    with torch.no_grad():
        torch.testing.assert_close(moe(x), dense_reference(moe, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parity
@pytest.mark.parametrize("top_k", [1, 2])
def test_matches_transformers_llama4_text_moe(top_k):
    moe = random_moe(num_experts=6, top_k=top_k, seed=top_k)
    config = Llama4TextConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_local_experts=6,
                              num_experts_per_tok=top_k)
    reference = Llama4TextMoe(config)
    reference.load_state_dict(moe.state_dict())  # the same names: router, experts.*, shared_expert.*
    x = torch.randn(50, HIDDEN, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(moe(x), reference(x)[0], rtol=1e-5, atol=1e-5)


def test_runs_one_matmul_pair_per_expert_that_has_tokens(monkeypatch):
    moe = random_moe(num_experts=16, top_k=2)
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(3))
    chosen = set(moe.router(x).topk(2, dim=-1).indices.flatten().tolist())
    calls = []
    original = Experts._expert

    def counting(self, expert: int, rows: torch.Tensor) -> torch.Tensor:
        calls.append((expert, len(rows)))
        return original(self, expert, rows)

    monkeypatch.setattr(Experts, "_expert", counting)
    with torch.no_grad():
        moe(x)
    assert sorted(e for e, _ in calls) == sorted(chosen) and sum(n for _, n in calls) == 10


def test_bfloat16_stays_close_to_float32():
    moe = random_moe(num_experts=4, top_k=1)
    x = torch.randn(64, HIDDEN, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = moe(x)
        out = moe.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert relative_error(out.float(), ref) < 3e-2
