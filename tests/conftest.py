"""Tiny random Mllama checkpoints built with transformers (the reference) and saved in Hugging Face layout."""

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration

# Engines in tests (and the servers they start) compute with a fixed thread count, so that another test's load
# cannot change it between two runs that must agree token for token; test_cpu_threads checks the adaptive count.
os.environ.setdefault("VLMSERVE_CPU_THREADS", str(len(os.sched_getaffinity(0))))

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 500000.0}

# Three configs that differ in cross-attention positions, GQA ratio, tile count and tile size.
TINY_CONFIGS = {
    "gqa1-tile30": dict(
        text=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=37, cross_attention_layers=[1], rope_scaling={"rope_type": "default"}),
        vision=dict(image_size=30, patch_size=2, hidden_size=16, num_hidden_layers=4, num_global_layers=2,
                    attention_heads=4, intermediate_size=37, intermediate_layers_indices=[1, 3],
                    vision_output_dim=48, max_num_tiles=4),
    ),
    "gqa2-2tiles": dict(
        text=dict(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, cross_attention_layers=[2, 4], rope_scaling=LLAMA3_ROPE),
        vision=dict(image_size=28, patch_size=7, hidden_size=16, num_hidden_layers=3, num_global_layers=1,
                    attention_heads=2, intermediate_size=32, intermediate_layers_indices=[1],
                    vision_output_dim=32, max_num_tiles=2,
                    supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]]),
    ),
    "gqa4-adjacent-cross": dict(
        text=dict(hidden_size=64, num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=96, cross_attention_layers=[1, 2], rope_scaling=LLAMA3_ROPE),
        vision=dict(image_size=42, patch_size=14, hidden_size=16, num_hidden_layers=5, num_global_layers=2,
                    attention_heads=4, intermediate_size=40, intermediate_layers_indices=[1, 2, 4],
                    vision_output_dim=64, max_num_tiles=4),
    ),
}
VOCAB_SIZE = 300
IMAGE_TOKEN = VOCAB_SIZE  # as in the real model: one past the LM head, embedded by an extra row


@dataclass
class TinyCheckpoint:
    name: str
    path: Path
    hf_model: object  # transformers model whose weights were saved at `path`

    def shifted_reference(self):
        """The same weights with every vision intermediate index moved down by one: the output of layer
        i-1 is the input of layer i, so this reproduces Meta's intermediate features in transformers 5.x."""
        config = copy.deepcopy(self.hf_model.config)
        config.vision_config.intermediate_layers_indices = [
            i - 1 for i in config.vision_config.intermediate_layers_indices]
        model = MllamaForConditionalGeneration(config).eval()
        model.load_state_dict(self.hf_model.state_dict())
        return model


def build_hf_config(name: str) -> MllamaConfig:
    spec = TINY_CONFIGS[name]
    text = dict(vocab_size=VOCAB_SIZE, hidden_act="silu", max_position_embeddings=512, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, **spec["text"])
    return MllamaConfig(text_config=text, vision_config=dict(spec["vision"]), image_token_index=IMAGE_TOKEN)


def randomize_gates(model) -> None:
    """Fresh models start with zero tanh gates, which would leave cross-attention and tile embeddings unused."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in {"gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate",
                                           "cross_attn_mlp_gate"}:
                param.copy_(torch.randn(param.shape, generator=generator).clamp(-2, 2) + 0.5)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, TinyCheckpoint]:
    checkpoints = {}
    for i, name in enumerate(TINY_CONFIGS):
        torch.manual_seed(i)
        model = MllamaForConditionalGeneration(build_hf_config(name)).eval()
        randomize_gates(model)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        checkpoints[name] = TinyCheckpoint(name, path, model)
    return checkpoints


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    """The embedded tiny random-weight checkpoint (real tokenizer), written once per test session."""
    from vlmserve.models.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "tiny-mllama")


@pytest.fixture(scope="session")
def demo_llm(demo_model_dir):
    from vlmserve import LLM

    return LLM(demo_model_dir, dtype="float32", device="cpu", num_kv_blocks=256)


@pytest.fixture(scope="session")
def served_llama4(tmp_path_factory):
    """A tiny Llama 4 checkpoint with the real special-token ids, the stand-in tokenizer and its transformers twin."""
    from tests.llama4_served import build_served_llama4

    return build_served_llama4(tmp_path_factory.mktemp("llama4-served"))
