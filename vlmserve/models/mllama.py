"""Llama 3.2 Vision (Mllama): vision encoder -> projector -> Llama 3 decoder with gated cross-attention layers.

The decoder runs on a flat batch (the new tokens of every sequence concatenated) over a paged KV cache.
Module names follow the Hub checkpoint, so loading is a straight name match.
"""

import torch
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.layers.attention import PagedAttention, cross_attention
from vlmserve.layers.attention_metadata import AttentionMetadata, CrossBatch
from vlmserve.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from vlmserve.layers.layernorm import RMSNorm
from vlmserve.layers.linear import add_attention_projections
from vlmserve.layers.mlp import GatedMLP
from vlmserve.layers.rotary_embedding import RotaryEmbedding
from vlmserve.models.mllama_config import MllamaConfig, MllamaTextConfig
from vlmserve.models.mllama_vision import MllamaVisionModel


def _add_attention_projections(module: nn.Module, config: MllamaTextConfig, tp: TensorParallel) -> None:
    """q/k/v/o projections (no bias) shared by the self- and cross-attention blocks."""
    add_attention_projections(module, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                              config.head_dim, tp)


class TextSelfAttention(nn.Module):
    def __init__(self, config: MllamaTextConfig, tp: TensorParallel):
        super().__init__()
        _add_attention_projections(self, config, tp)
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.rope)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions, x, metadata: AttentionMetadata) -> torch.Tensor:
        q = self.q_proj(x).view(-1, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, metadata).flatten(1))


class TextCrossAttention(nn.Module):
    """Queries from text, keys/values from the projected vision states; q/k RMS-normed per head, no RoPE."""

    def __init__(self, config: MllamaTextConfig, tp: TensorParallel):
        super().__init__()
        _add_attention_projections(self, config, tp)
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def vision_kv(self, vision_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[vision_tokens, hidden] -> k, v [vision_tokens, kv_heads, head_dim]."""
        k = self.k_norm(self.k_proj(vision_states).view(-1, self.num_kv_heads, self.head_dim))
        v = self.v_proj(vision_states).view(-1, self.num_kv_heads, self.head_dim)
        return k, v

    def forward(self, x, layer_idx: int, cross: CrossBatch) -> torch.Tensor:
        q = self.q_norm(self.q_proj(x).view(-1, self.num_heads, self.head_dim))
        return self.o_proj(cross_attention(q, layer_idx, cross, self.head_dim**-0.5).flatten(1))


class SelfAttentionDecoderLayer(nn.Module):
    def __init__(self, config: MllamaTextConfig, tp: TensorParallel):
        super().__init__()
        self.self_attn = TextSelfAttention(config, tp)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, x, metadata: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x), metadata)
        return x + self.mlp(self.post_attention_layernorm(x))


class CrossAttentionDecoderLayer(nn.Module):
    """Gated cross-attention block, computed only on the rows the step's CrossBatch names; the others keep their
    input. Rows that see no image (transformers' rule only) keep the attention branch and drop the MLP branch."""

    def __init__(self, config: MllamaTextConfig, layer_idx: int, tp: TensorParallel):
        super().__init__()
        self.layer_idx = layer_idx
        self.cross_attn = TextCrossAttention(config, tp)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.cross_attn_attn_gate = nn.Parameter(torch.zeros(1))
        self.cross_attn_mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, positions, x, metadata: AttentionMetadata) -> torch.Tensor:
        cross = metadata.cross
        if cross is None:
            return x
        h = x[cross.rows]
        h = h + self.cross_attn_attn_gate.tanh() * self.cross_attn(self.input_layernorm(h), self.layer_idx, cross)
        mlp = self.mlp(self.post_attention_layernorm(h))
        if cross.mlp_scale is not None:
            mlp = mlp * cross.mlp_scale
        return x.index_copy(0, cross.rows, h + self.cross_attn_mlp_gate.tanh() * mlp)


class MllamaTextModel(nn.Module):
    def __init__(self, config: MllamaTextConfig, tp: TensorParallel):
        super().__init__()
        # 8 extra rows past the vocabulary: <|image|> (128256) is embedded like any other token.
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size + 8, config.hidden_size, tp)
        self.layers = nn.ModuleList(
            CrossAttentionDecoderLayer(config, i, tp) if i in config.cross_attention_layers
            else SelfAttentionDecoderLayer(config, tp)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, metadata: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x, metadata)
        return self.norm(x)


class MllamaForCausalLM(nn.Module):
    def __init__(self, config: MllamaTextConfig, tp: TensorParallel):
        super().__init__()
        self.model = MllamaTextModel(config, tp)
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size, tp)


class MllamaForConditionalGeneration(nn.Module):
    """The whole model. `transformers_compat` reproduces transformers 5.x where it departs from Meta. `tp`: this
    rank's tensor-parallel group; the projector is replicated (every rank needs its whole output)."""

    def __init__(self, config: MllamaConfig, transformers_compat: bool = False, tp: TensorParallel = SINGLE):
        super().__init__()
        self.config = config
        self.transformers_compat = transformers_compat
        self.vision_model = MllamaVisionModel(config.vision, intermediate_as_layer_input=not transformers_compat,
                                              tp=tp)
        self.multi_modal_projector = nn.Linear(config.vision.vision_output_dim, config.text.hidden_size)
        self.language_model = MllamaForCausalLM(config.text, tp)

    @property
    def self_attention_layers(self) -> list[PagedAttention]:
        """The paged-attention cores, in layer order (the runner binds one KV cache to each)."""
        return [layer.self_attn.attn for layer in self.language_model.model.layers
                if isinstance(layer, SelfAttentionDecoderLayer)]

    def encode_images(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Images [images, tiles, 3, H, W] -> per cross-attention layer, k, v [images*tiles*patches, kv_heads, d]."""
        features = self.vision_model(pixel_values, aspect_ratio_ids, aspect_ratio_mask)
        states = self.multi_modal_projector(features).flatten(0, 2)  # [images*tiles*patches, hidden]
        return {layer.layer_idx: layer.cross_attn.vision_kv(states)
                for layer in self.language_model.model.layers if isinstance(layer, CrossAttentionDecoderLayer)}

    def forward(self, input_ids, positions, metadata: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        return self.language_model.model(input_ids, positions, metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> fp32 logits [T, vocab] over the whole vocabulary, on every rank."""
        return self.language_model.lm_head(hidden_states).float()
