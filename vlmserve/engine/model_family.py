"""What the engine does differently per model family: special tokens, how images enter prompts, where image
features go (cross-attention K/V in the pool, or embeddings in place of tokens), and the embedding rows."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlmserve.engine.early_fusion_state import EarlyFusionState
from vlmserve.engine.image_prompts import Llama4ImagePrompts, MllamaImagePrompts
from vlmserve.engine.vision_state import VisionState
from vlmserve.multimodal.llama4_processor import Llama4ImageConfig, Llama4ImageTokenIds
from vlmserve.multimodal.mllama_processor import MllamaImageConfig
from vlmserve.tokenizer.tokenizer import LLAMA3_SPECIAL_TOKENS, LLAMA4_SPECIAL_TOKENS, SpecialTokens, Tokenizer


@dataclass(frozen=True)
class ModelFamilyParts:
    special_tokens: SpecialTokens
    image_prompts: Callable[[Path, object, Tokenizer], MllamaImagePrompts | Llama4ImagePrompts]
    vision_state: type[VisionState] | type[EarlyFusionState]
    num_embeddings: Callable[[object], int]  # rows of the embedding table: the prompt ids it accepts


def _mllama_image_prompts(model_dir: Path, config, tokenizer: Tokenizer) -> MllamaImagePrompts:
    vision = config.vision
    image_config = MllamaImageConfig.from_model_dir(
        model_dir, {"image_size": vision.image_size, "max_num_tiles": vision.max_num_tiles})
    return MllamaImagePrompts(image_config, config.image_token_index)


def _llama4_image_prompts(model_dir: Path, config, tokenizer: Tokenizer) -> Llama4ImagePrompts:
    special = {name: tokenizer.token_to_id(token) for name, token in LLAMA4_IMAGE_TOKENS.items()}
    missing = [LLAMA4_IMAGE_TOKENS[name] for name, token_id in special.items() if token_id is None]
    if missing:
        raise ValueError(f"the tokenizer has no {missing[0]!r} token, which Llama 4 image prompts need")
    special["patch"] = config.image_token_index
    return Llama4ImagePrompts(_llama4_image_config(model_dir, config.vision), Llama4ImageTokenIds(**special))


def _llama4_image_config(model_dir: Path, vision) -> Llama4ImageConfig:
    """Tiling from the model's vision config; the tile budget and canvas rule from preprocessor_config.json."""
    path = model_dir / "preprocessor_config.json"
    preprocessor = json.loads(path.read_text()) if path.is_file() else {}
    size = preprocessor.get("size", {}).get("height", vision.image_size)
    if size != vision.image_size:
        raise ValueError(f"{path}: tile size {size} differs from the vision config's image_size {vision.image_size}")
    defaults = Llama4ImageConfig()
    return Llama4ImageConfig(
        tile_size=vision.image_size, patch_size=vision.patch_size, pixel_shuffle_ratio=vision.pixel_shuffle_ratio,
        max_patches=preprocessor.get("max_patches", defaults.max_patches),
        resize_to_max_canvas=preprocessor.get("resize_to_max_canvas", defaults.resize_to_max_canvas))


LLAMA4_IMAGE_TOKENS = {"image_start": "<|image_start|>", "image_end": "<|image_end|>", "image": "<|image|>",
                       "tile_x_separator": "<|tile_x_separator|>", "tile_y_separator": "<|tile_y_separator|>"}

MODEL_FAMILY_PARTS = {
    "mllama": ModelFamilyParts(LLAMA3_SPECIAL_TOKENS, _mllama_image_prompts, VisionState,
                               num_embeddings=lambda config: config.text.vocab_size + 8),
    "llama4": ModelFamilyParts(LLAMA4_SPECIAL_TOKENS, _llama4_image_prompts, EarlyFusionState,
                               num_embeddings=lambda config: config.text.vocab_size),
}
