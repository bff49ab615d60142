"""A tiny random Llama 4 checkpoint that the engine and server can serve: transformers' model saved with the real
special-token ids (vocabulary 202 048), the stand-in tokenizer and a preprocessor config."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Llama4Config, Llama4ForConditionalGeneration

from tests.models.llama4_checkpoints import randomize
from vlmserve.tokenizer.llama4_standin import write_llama4_standin_tokenizer

TILE, PATCH_SIZE = 28, 7  # 4 x 4 patches -> 4 image tokens per tile after the pixel shuffle
PATCH_TOKEN = 200092


@dataclass
class ServedLlama4:
    path: Path
    hf_model: Llama4ForConditionalGeneration

    def hf_greedy(self, prompt_token_ids: list[int], pixel_values: torch.Tensor | None, max_new_tokens: int):
        inputs = {"input_ids": torch.tensor([prompt_token_ids])}
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values.float()
        with torch.no_grad():
            out = self.hf_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=None, pad_token_id=200018)
        return out[0, len(prompt_token_ids):].tolist()


def build_served_llama4(path: Path) -> ServedLlama4:
    text = dict(vocab_size=202048, hidden_size=32, intermediate_size=16, intermediate_size_mlp=48,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layer_interval=2, use_qk_norm=True,
                attention_chunk_size=8, attn_temperature_tuning=True, floor_scale=4, attn_scale=0.2,
                hidden_act="silu", max_position_embeddings=8192, pad_token_id=200018, bos_token_id=200000,
                eos_token_id=[200001, 200007, 200008],
                rope_parameters=dict(rope_type="default", rope_theta=500000.0))
    vision = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=TILE,
                  patch_size=PATCH_SIZE, vision_output_dim=24, projector_input_dim=24, projector_output_dim=24,
                  pixel_shuffle_ratio=0.5, rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    torch.manual_seed(7)
    config = Llama4Config(text_config=text, vision_config=vision, image_token_index=PATCH_TOKEN,
                          boi_token_index=200080, eoi_token_index=200081)
    model = Llama4ForConditionalGeneration(config).eval()
    randomize(model, seed=7)
    model.save_pretrained(path)
    write_llama4_standin_tokenizer(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Llama4ImageProcessorFast", "size": {"height": TILE, "width": TILE},
         "max_patches": 6, "resize_to_max_canvas": False}))
    return ServedLlama4(path, model)
