"""Tiny random Llama 4 checkpoints built with transformers (the reference) and saved in Hugging Face layout, and
hand-written prompts in the Llama 4 image-token layout."""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Llama4Config, Llama4ForConditionalGeneration

VOCAB_SIZE = 300
BOS, BOI, EOI, PATCH, IMAGE, TILE_X, TILE_Y = 1, 288, 289, 290, 291, 292, 293
CHUNK_SIZE = 8

# Two configs: MoE on every layer (top-1, qk-norm, llama3 RoPE, one NoPE layer in four) and interleaved
# dense/MoE layers (top-2, no qk-norm, plain RoPE, every other layer NoPE). Both attend in chunks of 8 positions
# and tune the NoPE layers' temperature from position 1 on (floor_scale 2 and 3).
TINY_LLAMA4 = {
    "moe-every-layer": dict(
        text=dict(hidden_size=32, intermediate_size=16, intermediate_size_mlp=48, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                  num_experts_per_tok=1, interleave_moe_layer_step=1, no_rope_layer_interval=4, use_qk_norm=True,
                  floor_scale=2, attn_scale=0.2,
                  rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=16.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0, original_max_position_embeddings=64)),
        vision=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28,
                    patch_size=7, vision_output_dim=24, projector_input_dim=24, projector_output_dim=24),
    ),
    "interleaved": dict(
        text=dict(hidden_size=48, intermediate_size=24, intermediate_size_mlp=64, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=12, num_local_experts=5,
                  num_experts_per_tok=2, interleave_moe_layer_step=2, no_rope_layer_interval=2, use_qk_norm=False,
                  floor_scale=3, attn_scale=0.2, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
                    patch_size=4, vision_output_dim=40, projector_input_dim=40, projector_output_dim=40),
    ),
}


@dataclass
class TinyLlama4:
    name: str
    path: Path
    hf_model: Llama4ForConditionalGeneration  # the transformers model whose weights were saved at `path`

    def inputs(self, case: str, seed: int = 0) -> tuple[list[int], torch.Tensor | None]:
        """A prompt of the case's images laid out for this config, and its pixel values."""
        vision = self.hf_model.config.vision_config
        tokens_per_tile = (vision.image_size // vision.patch_size) ** 2 // 4
        return prompt_ids(case, tokens_per_tile, seed), pixel_values(case, vision.image_size, seed)


def build_hf_config(name: str) -> Llama4Config:
    spec = TINY_LLAMA4[name]
    text = dict(vocab_size=VOCAB_SIZE, attention_chunk_size=CHUNK_SIZE, attn_temperature_tuning=True,
                hidden_act="silu", max_position_embeddings=512, pad_token_id=0, bos_token_id=BOS, eos_token_id=2,
                **spec["text"])
    vision = dict(pixel_shuffle_ratio=0.5, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                  **spec["vision"])
    return Llama4Config(text_config=text, vision_config=vision, image_token_index=PATCH, boi_token_index=BOI,
                        eoi_token_index=EOI)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations (transformers' 0.02 init leaves routing and logits nearly uniform), and
    norm weights and biases away from 1 and 0 so that loading them is tested too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.dim() == 1:
                param.copy_(0.1 * noise if name.endswith("bias") else noise)
            elif name.endswith("embed_tokens.weight") or name.endswith("positional_embedding_vlm"):
                param.copy_(noise)
            else:  # [out, in] Linear weights, and the [E, in, out] expert weights used as x @ W
                fan_in = param.shape[1] if param.dim() == 3 else param.shape[-1]
                param.copy_(noise / fan_in**0.5)


def build_checkpoints(root: Path) -> dict[str, TinyLlama4]:
    checkpoints = {}
    for i, name in enumerate(TINY_LLAMA4):
        torch.manual_seed(i)
        model = Llama4ForConditionalGeneration(build_hf_config(name)).eval()
        randomize(model, seed=100 + i)
        path = root / name
        model.save_pretrained(path)
        checkpoints[name] = TinyLlama4(name, path, model)
    return checkpoints


def image_tokens(grid: tuple[int, int], tokens_per_tile: int) -> list[int]:
    """One image's tokens as the Llama 4 processor lays them out: its tiles row by row with separators, then
    <|image|> and the global tile (a one-tile image has only the latter)."""
    rows, cols = grid
    tokens = [BOI]
    if rows * cols > 1:
        for _ in range(rows):
            for col in range(cols):
                tokens += [PATCH] * tokens_per_tile + ([TILE_X] if col < cols - 1 else [])
            tokens.append(TILE_Y)
    return tokens + [IMAGE] + [PATCH] * tokens_per_tile + [EOI]


def random_text(count: int, seed: int) -> list[int]:
    return torch.randint(3, BOI, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def num_tiles(grid: tuple[int, int]) -> int:
    return 1 if grid == (1, 1) else grid[0] * grid[1] + 1


# case -> the image grids (rows, cols of tiles), in prompt order: text, each image followed by text, text.
PROMPT_IMAGES = {"no-image": [], "one-image": [(1, 1)], "two-images": [(1, 2), (1, 1)]}


def prompt_ids(case: str, tokens_per_tile: int, seed: int = 0) -> list[int]:
    ids = [BOS] + random_text(12, seed)
    for k, grid in enumerate(PROMPT_IMAGES[case]):
        ids += image_tokens(grid, tokens_per_tile) + random_text(5, seed + k + 1)
    return ids + random_text(8, seed + 10)


def pixel_values(case: str, image_size: int, seed: int = 0) -> torch.Tensor | None:
    """Random tiles [tiles, 3, S, S] for the case's images, or None without images."""
    tiles = sum(num_tiles(grid) for grid in PROMPT_IMAGES[case])
    if not tiles:
        return None
    return torch.randn(tiles, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
