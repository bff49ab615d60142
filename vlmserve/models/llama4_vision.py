"""Llama 4 vision tower: a ViT with 2-D RoPE run on each tile alone, then pixel shuffle and a GELU adapter.

Tiles are independent (no cross-tile attention, no mask). Module names follow the checkpoint (`vision_model.*`).
Under tensor parallelism the encoder layers are split by heads; the stems, adapter and norms are replicated.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.layers.linear import ColumnParallelLinear, RowParallelLinear
from vlmserve.layers.mlp import VisionMLP
from vlmserve.layers.rotary_embedding import rotate_pairs
from vlmserve.models.llama4_config import Llama4VisionConfig


class UnfoldPatchEmbedding(nn.Module):
    """Non-overlapping patches, each flattened channel-major (c, row, col), through one bias-free Linear."""

    def __init__(self, config: Llama4VisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.linear = nn.Linear(config.num_channels * config.patch_size**2, config.hidden_size, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[tiles, C, S, S] -> [tiles, patches, D], patches row-major."""
        patches = F.unfold(pixel_values, kernel_size=self.patch_size, stride=self.patch_size)
        return self.linear(patches.transpose(1, 2))


def vision_rope_angles(config: Llama4VisionConfig) -> torch.Tensor:
    """[num_patches, head_dim/2] rotation angles: for the patch at grid (row y, col x), the first half of the pairs
    turn by (x+1)*f_k, the second half by (y+1)*f_k, f_k = theta^(-4k/head_dim); the class token (last) by 0."""
    grid, quarter = config.grid_size, config.head_dim // 4
    freqs = 1.0 / config.rope_theta ** (torch.arange(0, 2 * quarter, 2).float() / (2 * quarter))
    index = torch.arange(grid * grid)
    x, y = (index % grid + 1).float(), (index // grid + 1).float()
    angles = torch.cat([x[:, None] * freqs, y[:, None] * freqs], dim=-1)  # [patches, head_dim/2]
    return torch.cat([angles, angles.new_zeros(1, 2 * quarter)])


class VisionRotaryEmbedding(nn.Module):
    def __init__(self, config: Llama4VisionConfig):
        super().__init__()
        self.config = config
        self.register_buffer("angles", vision_rope_angles(config), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the angles in fp32 (after the model was built on the meta device and materialised)."""
        self.angles = vision_rope_angles(self.config).to(self.angles.device)

    def forward(self, q: torch.Tensor, k: torch.Tensor):
        """q, k [tiles, num_patches, heads, head_dim]."""
        rotation = torch.polar(torch.ones_like(self.angles), self.angles)[:, None, :]  # [patches, 1, head_dim/2]
        return rotate_pairs(q, rotation), rotate_pairs(k, rotation)


class VisionAttention(nn.Module):
    def __init__(self, config: Llama4VisionConfig, tp: TensorParallel):
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads // tp.size, config.head_dim  # this rank's heads
        dim = config.hidden_size
        self.q_proj = ColumnParallelLinear(dim, dim, bias=True, tp=tp)
        self.k_proj = ColumnParallelLinear(dim, dim, bias=True, tp=tp)
        self.v_proj = ColumnParallelLinear(dim, dim, bias=True, tp=tp)
        self.o_proj = RowParallelLinear(dim, dim, bias=True, tp=tp)

    def forward(self, x: torch.Tensor, rope: VisionRotaryEmbedding) -> torch.Tensor:
        """x [tiles, num_patches, D]: full attention within each tile."""
        tiles, seq, _ = x.shape
        q, k, v = (proj(x).view(tiles, seq, self.num_heads, self.head_dim)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rope(q, k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(tiles, seq, -1))


class VisionEncoderLayer(nn.Module):
    def __init__(self, config: Llama4VisionConfig, tp: TensorParallel):
        super().__init__()
        self.self_attn = VisionAttention(config, tp)
        self.mlp = VisionMLP(config.hidden_size, config.intermediate_size, tp)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, rope: VisionRotaryEmbedding) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class VisionEncoder(nn.Module):
    def __init__(self, config: Llama4VisionConfig, tp: TensorParallel):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(config, tp) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, rope: VisionRotaryEmbedding) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, rope)
        return x


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """[tiles, grid*grid, C] -> [tiles, (grid/n)^2, n*n*C] with n = 1/ratio: output token (h, w) holds the n x n
    block at rows n*h + i, cols n*w + j, channel i*n*C + j*C + c."""
    tiles, patches, channels = x.shape
    n, grid = round(1 / ratio), round(patches**0.5)
    x = x.view(tiles, grid // n, n, grid // n, n, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(tiles, (grid // n) ** 2, n * n * channels)


class VisionAdapterMLP(nn.Module):
    """GELU after fc1 and after fc2 (no biases)."""

    def __init__(self, config: Llama4VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.intermediate_size, config.projector_input_dim, bias=False)
        self.fc2 = nn.Linear(config.projector_output_dim, config.projector_output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc2(F.gelu(self.fc1(x))))


class PixelShuffleAdapter(nn.Module):
    def __init__(self, config: Llama4VisionConfig):
        super().__init__()
        self.ratio = config.pixel_shuffle_ratio
        self.mlp = VisionAdapterMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(pixel_shuffle(x, self.ratio))


class Llama4VisionModel(nn.Module):
    def __init__(self, config: Llama4VisionConfig, tp: TensorParallel = SINGLE):
        super().__init__()
        dim = config.hidden_size
        self.patch_embedding = UnfoldPatchEmbedding(config)
        self.class_embedding = nn.Parameter(torch.zeros(dim))
        self.positional_embedding_vlm = nn.Parameter(torch.zeros(config.num_patches, dim))
        self.rotary_embedding = VisionRotaryEmbedding(config)
        self.layernorm_pre = nn.LayerNorm(dim, eps=config.norm_eps)
        self.layernorm_post = nn.LayerNorm(dim, eps=config.norm_eps)
        self.model = VisionEncoder(config, tp)
        self.vision_adapter = PixelShuffleAdapter(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [tiles, C, S, S] -> [tiles, tokens_per_tile, vision_output_dim]."""
        x = self.patch_embedding(pixel_values.to(self.class_embedding.dtype))  # [tiles, patches, D]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([x, cls], dim=1) + self.positional_embedding_vlm  # the class token goes LAST
        x = self.model(self.layernorm_pre(x), self.rotary_embedding)
        x = self.layernorm_post(x)[:, :-1]  # drop the class token
        return self.vision_adapter(x)
