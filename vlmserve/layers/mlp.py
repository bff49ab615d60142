"""Feed-forwards: the gated (SwiGLU) one of the Llama decoders, and the GELU one of the ViT vision encoders. Both
tensor parallel: the first projection(s) column-split, the last row-split with one all-reduce."""

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.layers.linear import ColumnParallelLinear, RowParallelLinear

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu",
                 tp: TensorParallel = SINGLE, reduce_results: bool = True):
        super().__init__()
        self.gate_proj = ColumnParallelLinear(hidden_size, intermediate_size, tp=tp)
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size, tp=tp)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, tp=tp, reduce_results=reduce_results)
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionMLP(nn.Module):
    """fc2(GELU(fc1(x))), with biases: the feed-forward of the ViT encoder layers."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TensorParallel = SINGLE):
        super().__init__()
        self.fc1 = ColumnParallelLinear(hidden_size, intermediate_size, bias=True, tp=tp)
        self.fc2 = RowParallelLinear(intermediate_size, hidden_size, bias=True, tp=tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
