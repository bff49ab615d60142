"""Llama 4's mixture-of-experts feed-forward: a shared SwiGLU expert plus top-k routed SwiGLU experts.

The router's sigmoid score scales what a routed expert is given (its input), not what it returns. Routed experts
run grouped: the (token, expert) assignments are sorted by expert and each expert with tokens runs one matmul over
its rows, so the work is top_k x tokens rows, not num_experts x tokens.

Tensor parallel inside every expert: a rank holds 1/N of each expert's (and the shared expert's) intermediate
features, computes its partial sums of both, and one all-reduce adds them up. The router is replicated: every rank
routes every token the same way.
"""

import torch
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.distributed.sharding import ROW, ShardSpec
from vlmserve.layers.mlp import ACTIVATIONS, GatedMLP


class Experts(nn.Module):
    """E SwiGLU experts with weights stored for x @ W, as the checkpoint has them: gate_up_proj [E, H, 2I] (the
    gate's I columns, then the up's), down_proj [E, I, H]; under tensor parallelism I is this rank's I/N."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, hidden_act: str = "silu",
                 tp: TensorParallel = SINGLE):
        super().__init__()
        if intermediate_size % tp.size:
            raise ValueError(f"expert intermediate size {intermediate_size} cannot be split over {tp.size} ranks")
        local = intermediate_size // tp.size
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden_size, 2 * local))
        self.down_proj = nn.Parameter(torch.empty(num_experts, local, hidden_size))
        # gate_up: this rank's 1/N of the gate columns, then the same 1/N of the up columns; down: its I/N rows.
        self.shard_specs = {"gate_up_proj": ShardSpec(2, "column", num_parts=2), "down_proj": ROW}
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """x [T, H]; expert_ids, scores [T, k] -> sum over the k choices of expert(x * score) [T, H] (this rank's
        partial sum under tensor parallelism)."""
        flat_ids = expert_ids.flatten()  # [T*k], token-major
        order = flat_ids.argsort(stable=True)
        rows = order // expert_ids.shape[1]  # the token each sorted assignment belongs to
        inputs = x[rows] * scores.flatten()[order, None]  # [T*k, H], grouped by expert
        experts, counts = flat_ids[order].unique_consecutive(return_counts=True)
        outputs = torch.empty_like(inputs)
        start = 0
        for expert, count in zip(experts.tolist(), counts.tolist()):
            outputs[start : start + count] = self._expert(expert, inputs[start : start + count])
            start += count
        combined = torch.empty_like(outputs)
        combined[order] = outputs  # back to token-major
        return combined.view(*expert_ids.shape, x.shape[-1]).sum(dim=1)

    def _expert(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ self.gate_up_proj[expert]).chunk(2, dim=-1)  # [n, I] each
        return (self.act(gate) * up) @ self.down_proj[expert]


class MoE(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 hidden_act: str = "silu", tp: TensorParallel = SINGLE):
        super().__init__()
        self.top_k, self.tp = top_k, tp
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden_size, intermediate_size, hidden_act, tp)
        self.shared_expert = GatedMLP(hidden_size, intermediate_size, hidden_act, tp, reduce_results=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> [T, H]."""
        top_logits, expert_ids = self.router(x).topk(self.top_k, dim=-1)  # [T, k]
        scores = torch.sigmoid(top_logits.float()).to(x.dtype)
        return self.tp.all_reduce(self.shared_expert(x) + self.experts(x, expert_ids, scores))
