"""Tensor-parallel linear layers (Megatron's split): column-parallel layers hold a slice of the output features,
row-parallel ones a slice of the input features and all-reduce their partial sums. Parameters carry the Hub names
and this rank's shapes; each layer declares their split (`shard_specs`), which vlmserve/distributed/sharding.py
turns into the slice of the checkpoint tensor that fills them. On one rank each is exactly nn.Linear."""

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.distributed.sharding import (
    COLUMN,
    REPLICATED,
    ROW,
    ShardSpec,
    kv_heads_per_rank,
)


class _Linear(nn.Module):
    """A rank's weight [out, in] and bias [out], and how each is split (a row-parallel layer's bias is whole: added
    after the reduce)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, weight_spec: ShardSpec,
                 bias_spec: ShardSpec):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.shard_specs = {"weight": weight_spec, "bias": bias_spec}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(_Linear):
    """y[..., out/N] = x W_r^T + b_r: this rank's out/N output features (the whole of them with gather_output)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TensorParallel = SINGLE,
                 gather_output: bool = False):
        if out_features % tp.size:
            raise ValueError(f"{out_features} output features cannot be split over {tp.size} ranks")
        super().__init__(in_features, out_features // tp.size, bias, COLUMN, COLUMN)
        self.tp, self.gather_output = tp, gather_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return self.tp.all_gather(y) if self.gather_output else y


class KVParallelLinear(_Linear):
    """k_proj / v_proj: this rank's kv heads, whole (an even share, or the one head its q heads read when there are
    more ranks than kv heads: then that head is replicated)."""

    def __init__(self, in_features: int, num_kv_heads: int, head_dim: int, bias: bool = False,
                 tp: TensorParallel = SINGLE):
        out_features = kv_heads_per_rank(num_kv_heads, tp.size) * head_dim
        spec = ShardSpec(0, "kv_column", num_kv_heads=num_kv_heads)
        super().__init__(in_features, out_features, bias, spec, spec)


class RowParallelLinear(_Linear):
    """y = sum over ranks of x_r W_r^T, then + b (held whole, added once after the reduce). x holds this rank's
    in/N input features. reduce_results=False leaves the partial sum to the caller (MoE: one reduce for two)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TensorParallel = SINGLE,
                 reduce_results: bool = True):
        if in_features % tp.size:
            raise ValueError(f"{in_features} input features cannot be split over {tp.size} ranks")
        if bias and not reduce_results:
            raise ValueError("a row-parallel bias is added after the all-reduce: it needs reduce_results")
        super().__init__(in_features // tp.size, out_features, bias, ROW, REPLICATED)
        self.tp, self.reduce_results = tp, reduce_results

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(x)
        y = F.linear(x, self.weight)
        if self.reduce_results:
            y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias


def add_attention_projections(module: nn.Module, hidden_size: int, num_heads: int, num_kv_heads: int,
                              head_dim: int, tp: TensorParallel) -> None:
    """A decoder attention block's bias-free q/k/v/o projections (split by whole heads), and its num_heads and
    num_kv_heads: this rank's."""
    module.num_heads, module.num_kv_heads = num_heads // tp.size, kv_heads_per_rank(num_kv_heads, tp.size)
    module.head_dim = head_dim
    module.q_proj = ColumnParallelLinear(hidden_size, num_heads * head_dim, tp=tp)
    module.k_proj = KVParallelLinear(hidden_size, num_kv_heads, head_dim, tp=tp)
    module.v_proj = KVParallelLinear(hidden_size, num_kv_heads, head_dim, tp=tp)
    module.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size, tp=tp)
