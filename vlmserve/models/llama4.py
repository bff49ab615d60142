"""Llama 4 (Scout, Maverick): vision tower -> projector -> image features in place of the <|patch|> embeddings
of a decoder whose feed-forward is a mixture of experts (on every layer, or every other one).

Every decoder layer self-attends over the paged KV cache. RoPE layers (interleaved RoPE, then L2 qk-norm) attend
only within their chunk of attention_chunk_size positions; NoPE layers (every few layers: no RoPE, no qk-norm)
attend to the whole context with a query temperature that grows with position. The decoder runs on a flat batch
(the new tokens of every sequence concatenated). Module names follow the Hub checkpoint, so loading is a straight
name match.
"""

import torch
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.layers.attention import PagedAttention
from vlmserve.layers.attention_metadata import AttentionMetadata
from vlmserve.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from vlmserve.layers.layernorm import RMSNorm
from vlmserve.layers.linear import add_attention_projections
from vlmserve.layers.mlp import GatedMLP
from vlmserve.layers.moe import MoE
from vlmserve.layers.rotary_embedding import InterleavedRotaryEmbedding
from vlmserve.models.llama4_config import Llama4Config, Llama4TextConfig
from vlmserve.models.llama4_vision import Llama4VisionModel


def l2_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim in fp32, no weight (Llama 4's qk-norm)."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class TextAttention(nn.Module):
    def __init__(self, config: Llama4TextConfig, layer_idx: int, tp: TensorParallel):
        super().__init__()
        add_attention_projections(self, config.hidden_size, config.num_attention_heads,
                                  config.num_key_value_heads, config.head_dim, tp)
        use_rope = config.uses_rope(layer_idx)
        self.rotary_emb = InterleavedRotaryEmbedding(self.head_dim, config.rope) if use_rope else None
        self.qk_norm_eps = config.rms_norm_eps if use_rope and config.use_qk_norm else None
        self.tune_temperature = config.attn_temperature_tuning and not use_rope
        self.floor_scale, self.attn_scale = config.floor_scale, config.attn_scale
        chunk_size = config.attention_chunk_size if use_rope else None
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, chunk_size=chunk_size)

    def forward(self, positions, x, metadata: AttentionMetadata) -> torch.Tensor:
        q = self.q_proj(x).view(-1, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(positions, q, k)
        if self.qk_norm_eps is not None:
            q, k = l2_norm(q, self.qk_norm_eps), l2_norm(k, self.qk_norm_eps)
        if self.tune_temperature:
            q = (q * self.query_temperature(positions)).to(q.dtype)
        return self.o_proj(self.attn(q, k, v, metadata).flatten(1))

    def query_temperature(self, positions: torch.Tensor) -> torch.Tensor:
        """[T, 1, 1] fp32: 1 + attn_scale * log(1 + floor((p + 1) / floor_scale)) at absolute position p."""
        steps = torch.floor((positions.float() + 1.0) / self.floor_scale)
        return (torch.log1p(steps) * self.attn_scale + 1.0)[:, None, None]


class DecoderLayer(nn.Module):
    def __init__(self, config: Llama4TextConfig, layer_idx: int, tp: TensorParallel):
        super().__init__()
        self.self_attn = TextAttention(config, layer_idx, tp)
        if layer_idx in config.moe_layers:
            self.feed_forward = MoE(config.hidden_size, config.intermediate_size, config.num_local_experts,
                                    config.num_experts_per_tok, config.hidden_act, tp)
        else:
            self.feed_forward = GatedMLP(config.hidden_size, config.intermediate_size_mlp, config.hidden_act, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, x, metadata: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x), metadata)
        return x + self.feed_forward(self.post_attention_layernorm(x))


class Llama4TextModel(nn.Module):
    def __init__(self, config: Llama4TextConfig, tp: TensorParallel):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(DecoderLayer(config, i, tp) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, positions, metadata: AttentionMetadata) -> torch.Tensor:
        """Input embeddings x [T, hidden] -> final hidden states [T, hidden]."""
        for layer in self.layers:
            x = layer(positions, x, metadata)
        return self.norm(x)


class Llama4ForCausalLM(nn.Module):
    def __init__(self, config: Llama4TextConfig, tp: TensorParallel):
        super().__init__()
        self.model = Llama4TextModel(config, tp)
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size, tp)


class MultiModalProjector(nn.Module):
    def __init__(self, config: Llama4Config):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision.vision_output_dim, config.text.hidden_size,
                                  bias=config.vision.multi_modal_projector_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_1(x)


class Llama4ForConditionalGeneration(nn.Module):
    """The whole model. `transformers_compat` is stored for the engine's uniform interface: for Llama 4 we know of
    no departure of transformers from Meta's reference that this model would have to choose between (Meta's
    reference decodes its RoPE layers without the chunk mask, which we, like transformers, do not copy). `tp`: this
    rank's tensor-parallel group; the projector is replicated."""

    def __init__(self, config: Llama4Config, transformers_compat: bool = False, tp: TensorParallel = SINGLE):
        super().__init__()
        self.config = config
        self.transformers_compat = transformers_compat
        self.vision_model = Llama4VisionModel(config.vision, tp)
        self.multi_modal_projector = MultiModalProjector(config)
        self.language_model = Llama4ForCausalLM(config.text, tp)

    @property
    def self_attention_layers(self) -> list[PagedAttention]:
        """The paged-attention cores, in layer order (the runner binds one KV cache to each)."""
        return [layer.self_attn.attn for layer in self.language_model.model.layers]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles [tiles, 3, S, S] -> image token embeddings [tiles * tokens_per_tile, hidden], in tile order."""
        return self.multi_modal_projector(self.vision_model(pixel_values)).flatten(0, 1)

    def forward(self, input_ids, positions, metadata: AttentionMetadata, image_embeds: torch.Tensor | None = None,
                image_token_rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]. image_embeds [N, hidden] replace the
        embeddings at the flat rows `image_token_rows` [N] (the engine names the prompt's image tokens: a generated
        image token embeds as itself); without rows, the N image tokens among input_ids, in order."""
        x = self.language_model.model.embed_tokens(input_ids)
        if image_embeds is not None:
            if image_token_rows is None:
                image_token_rows = (input_ids == self.config.image_token_index).nonzero().flatten()
            if image_token_rows.shape[0] != image_embeds.shape[0]:
                raise ValueError(f"{image_embeds.shape[0]} image embeddings for {image_token_rows.shape[0]} image "
                                 f"token rows (id {self.config.image_token_index})")
            x = x.index_copy(0, image_token_rows, image_embeds.to(x.dtype))
        return self.language_model.model(x, positions, metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> fp32 logits [T, vocab] over the whole vocabulary, on every rank."""
        return self.language_model.lm_head(hidden_states).float()
