"""A tiny random-weight Llama 3.2 Vision checkpoint with the real tokenizer: the embedded demo model.

Its weights are random: it exercises the whole system (images, chat format, engine, server) quickly on a CPU,
and its answers mean nothing.
"""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmserve.models.mllama import MllamaForConditionalGeneration
from vlmserve.models.mllama_config import parse_mllama_config
from vlmserve.multimodal.mllama_processor import MllamaImageConfig
from vlmserve.tokenizer.tokenizer import packaged_tokenizer_path

TINY_TILE_SIZE = 56
MARKER = "RANDOM_WEIGHTS.txt"
GATES = {"gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate", "cross_attn_mlp_gate"}


def tiny_config() -> dict:
    """Hub-style config.json: real vocabulary and special ids, toy dimensions."""
    return {
        "architectures": ["MllamaForConditionalGeneration"],
        "model_type": "mllama",
        "torch_dtype": "bfloat16",
        "image_token_index": 128256,
        "text_config": {
            "model_type": "mllama_text_model", "vocab_size": 128256, "hidden_size": 64, "num_hidden_layers": 5,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "hidden_act": "silu",
            "cross_attention_layers": [1, 3], "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
            "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "pad_token_id": 128004,
        },
        "vision_config": {
            "model_type": "mllama_vision_model", "hidden_size": 32, "num_hidden_layers": 3, "num_global_layers": 1,
            "attention_heads": 2, "intermediate_size": 64, "vision_output_dim": 96, "image_size": TINY_TILE_SIZE,
            "patch_size": 14, "max_num_tiles": 4, "intermediate_layers_indices": [1, 2], "norm_eps": 1e-5,
        },
    }


def _random_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(parse_mllama_config(config))
    state = {}
    for name, param in model.state_dict().items():
        if name.rsplit(".", 1)[-1] in GATES:
            value = torch.empty_like(param).uniform_(0.3, 1.0)
        elif "norm" in name:
            value = torch.ones_like(param) if name.endswith("weight") else torch.zeros_like(param)
        else:
            value = torch.randn_like(param) * 0.05
        state[name] = value.to(torch.bfloat16).contiguous()
    return state


def write_tiny_checkpoint(model_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write config, random bf16 weights, tokenizer and image-processor config into model_dir."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    save_file(_random_state_dict(config, seed), str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    image = MllamaImageConfig()
    (model_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "MllamaImageProcessor", "size": {"height": TINY_TILE_SIZE, "width": TINY_TILE_SIZE},
        "max_image_tiles": 4, "image_mean": list(image.image_mean), "image_std": list(image.image_std),
        "rescale_factor": image.rescale_factor, "resample": 2,
    }, indent=2))
    shutil.copyfile(packaged_tokenizer_path(), model_dir / "tokenizer.json")
    (model_dir / MARKER).write_text("Random weights, for trying vlmserve, not for answers.\n")
    return model_dir


def demo_model_dir() -> Path:
    home = os.environ.get("VLMSERVE_HOME") or Path.home() / ".cache" / "vlmserve"
    return Path(home) / "tiny-mllama-random"


def ensure_demo_model() -> Path:
    """The embedded demo checkpoint, written on first use."""
    path = demo_model_dir()
    if not (path / MARKER).is_file():
        write_tiny_checkpoint(path)
    return path
