"""Mllama vision encoder: tiled ViT with gated tile/position embeddings and a gated global transformer.

All tiles of one image form one attention sequence. Module names follow the checkpoint (`vision_model.*`). Under
tensor parallelism the encoder layers are split by heads (one all-reduce after attention, one after the MLP); the
stems, layer norms and gates are replicated.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.layers.linear import ColumnParallelLinear, RowParallelLinear
from vlmserve.layers.mlp import VisionMLP
from vlmserve.models.mllama_config import MllamaVisionConfig


class AspectRatioEmbedding(nn.Module):
    """One learned vector per tile, chosen by the image's aspect-ratio id and added under a tanh gate."""

    def __init__(self, config: MllamaVisionConfig):
        super().__init__()
        self.max_num_tiles, self.hidden_size = config.max_num_tiles, config.hidden_size
        self.embedding = nn.Embedding(config.max_aspect_ratio_id + 1, config.max_num_tiles * config.hidden_size)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        """x [images, tiles, tokens, D]."""
        emb = self.embedding(aspect_ratio_ids).reshape(-1, self.max_num_tiles, 1, self.hidden_size)
        return x + emb * self.gate.tanh()


class GatedPositionalEmbedding(nn.Module):
    """Per-token position embedding blended by a tanh gate with a per-aspect-ratio tile-position embedding."""

    def __init__(self, config: MllamaVisionConfig):
        super().__init__()
        self.max_num_tiles, self.num_patches = config.max_num_tiles, config.num_patches
        self.hidden_size = config.hidden_size
        self.embedding = nn.Parameter(torch.zeros(config.num_patches, config.hidden_size))
        self.tile_embedding = nn.Embedding(
            config.max_aspect_ratio_id + 1, config.max_num_tiles * config.num_patches * config.hidden_size
        )
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        gate = self.gate.tanh()
        x = x + (1 - gate) * self.embedding
        tile = self.tile_embedding(aspect_ratio_ids)
        return x + gate * tile.reshape(-1, self.max_num_tiles, self.num_patches, self.hidden_size)


class VisionAttention(nn.Module):
    def __init__(self, config: MllamaVisionConfig, tp: TensorParallel):
        super().__init__()
        self.num_heads = config.attention_heads // tp.size  # this rank's
        self.head_dim = config.hidden_size // config.attention_heads
        dim = config.hidden_size
        self.q_proj = ColumnParallelLinear(dim, dim, tp=tp)
        self.k_proj = ColumnParallelLinear(dim, dim, tp=tp)
        self.v_proj = ColumnParallelLinear(dim, dim, tp=tp)
        self.o_proj = RowParallelLinear(dim, dim, tp=tp)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [images, seq, D]; mask [images, 1, seq, seq] bool."""
        batch, seq, _ = x.shape
        q, k, v = (p(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class VisionEncoderLayer(nn.Module):
    """Pre-LayerNorm ViT block; the global layers scale both branches by tanh gates."""

    def __init__(self, config: MllamaVisionConfig, is_gated: bool, tp: TensorParallel):
        super().__init__()
        self.self_attn = VisionAttention(config, tp)
        self.mlp = VisionMLP(config.hidden_size, config.intermediate_size, tp)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.is_gated = is_gated
        if is_gated:
            self.gate_attn = nn.Parameter(torch.zeros(1))
            self.gate_ffn = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), mask)
        x = x + (self.gate_attn.tanh() * attn if self.is_gated else attn)
        mlp = self.mlp(self.post_attention_layernorm(x))
        return x + (self.gate_ffn.tanh() * mlp if self.is_gated else mlp)


class VisionEncoder(nn.Module):
    def __init__(self, config: MllamaVisionConfig, num_layers: int, is_gated: bool, tp: TensorParallel):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(config, is_gated, tp) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keep: tuple[int, ...] = (), keep_inputs: bool = True):
        """Returns the final states and the states kept at `keep`: each layer's input (Meta) or output."""
        kept = []
        for i, layer in enumerate(self.layers):
            if keep_inputs and i in keep:
                kept.append(x)
            x = layer(x, mask)
            if not keep_inputs and i in keep:
                kept.append(x)
        return x, kept


def tile_attention_mask(aspect_ratio_mask: torch.Tensor, num_patches: int, padded_len: int) -> torch.Tensor:
    """[images, 1, tiles*padded_len, tiles*padded_len] bool, True = may attend.

    A pair is blocked only when both tokens are padding (padded tile or pad position), as in the reference:
    real tokens do attend to padding, so padded tiles must be exact zeros upstream.
    """
    images, tiles = aspect_ratio_mask.shape
    is_pad = (aspect_ratio_mask == 0)[:, :, None].expand(images, tiles, padded_len).clone()
    is_pad[:, :, num_patches:] = True
    is_pad = is_pad.reshape(images, tiles * padded_len)
    return ~(is_pad[:, :, None] & is_pad[:, None, :])[:, None]


class MllamaVisionModel(nn.Module):
    def __init__(self, config: MllamaVisionConfig, intermediate_as_layer_input: bool = True,
                 tp: TensorParallel = SINGLE):
        super().__init__()
        self.config = config
        self.intermediate_as_layer_input = intermediate_as_layer_input
        dim = config.hidden_size
        self.patch_embedding = nn.Conv2d(config.num_channels, dim, config.patch_size, config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(dim))
        self.gated_positional_embedding = GatedPositionalEmbedding(config)
        self.pre_tile_positional_embedding = AspectRatioEmbedding(config)
        self.post_tile_positional_embedding = AspectRatioEmbedding(config)
        self.layernorm_pre = nn.LayerNorm(dim)
        self.layernorm_post = nn.LayerNorm(dim)
        self.transformer = VisionEncoder(config, config.num_hidden_layers, is_gated=False, tp=tp)
        self.global_transformer = VisionEncoder(config, config.num_global_layers, is_gated=True, tp=tp)

    def forward(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask) -> torch.Tensor:
        """pixel_values [images, tiles, 3, H, W] -> [images, tiles, num_patches, vision_output_dim]."""
        images, tiles = pixel_values.shape[:2]
        dim, num_patches = self.config.hidden_size, self.config.num_patches
        x = self.patch_embedding(pixel_values.flatten(0, 1).to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2).reshape(images, tiles, -1, dim)  # [images, tiles, patches, D]
        x = self.pre_tile_positional_embedding(x, aspect_ratio_ids)
        cls = self.class_embedding.expand(images, tiles, 1, dim)
        x = self.gated_positional_embedding(torch.cat([cls, x], dim=2), aspect_ratio_ids)
        x = self.layernorm_pre(x)
        padded_len = -(-num_patches // 8) * 8
        x = F.pad(x, (0, 0, 0, padded_len - num_patches))  # [images, tiles, padded_len, D]
        mask = tile_attention_mask(aspect_ratio_mask, num_patches, padded_len)
        x, kept = self.transformer(
            x.reshape(images, tiles * padded_len, dim), mask,
            keep=self.config.intermediate_layers_indices, keep_inputs=self.intermediate_as_layer_input,
        )
        x = self.layernorm_post(x).reshape(images, tiles, padded_len, dim)
        x = self.post_tile_positional_embedding(x, aspect_ratio_ids)
        x, _ = self.global_transformer(x.reshape(images, tiles * padded_len, dim), mask)
        x = x.reshape(images, tiles, padded_len, dim)[:, :, :num_patches]
        # Intermediate features interleave per channel: feature c*len(kept) + k is channel c of state k.
        inter = torch.stack(kept, dim=-1).reshape(images, tiles, padded_len, -1)[:, :, :num_patches]
        return torch.cat([x, inter], dim=-1)
