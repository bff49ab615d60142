"""Llama 4 (early fusion): each image expands into tile tokens whose embeddings the vision features replace."""

import json
from pathlib import Path

from vlmserve.engine.early_fusion_state import EarlyFusionState
from vlmserve.engine.image_prompts import Llama4ImagePrompts
from vlmserve.families.base import ModelFamily
from vlmserve.models.llama4 import Llama4ForConditionalGeneration
from vlmserve.models.llama4_config import (
    Llama4Config,
    Llama4VisionConfig,
    parse_llama4_config,
)
from vlmserve.multimodal.llama4_processor import (
    LLAMA4_IMAGE_TOKEN_IDS,
    Llama4ImageConfig,
    Llama4ImageTokenIds,
    image_token_ids,
)
from vlmserve.tokenizer.llama4_chat_format import TOOL_FORMAT, render_llama4_chat
from vlmserve.tokenizer.tokenizer import LLAMA4_SPECIAL_TOKENS, Tokenizer

LLAMA4_IMAGE_TOKENS = {"image_start": "<|image_start|>", "image_end": "<|image_end|>", "image": "<|image|>",
                       "tile_x_separator": "<|tile_x_separator|>", "tile_y_separator": "<|tile_y_separator|>"}


def _image_prompts(model_dir: Path, config: Llama4Config, tokenizer: Tokenizer) -> Llama4ImagePrompts:
    special = {name: tokenizer.token_to_id(token) for name, token in LLAMA4_IMAGE_TOKENS.items()}
    missing = [LLAMA4_IMAGE_TOKENS[name] for name, token_id in special.items() if token_id is None]
    if missing:
        raise ValueError(f"the tokenizer has no {missing[0]!r} token, which Llama 4 image prompts need")
    special["patch"] = config.image_token_index
    return Llama4ImagePrompts(_image_config(model_dir, config.vision), Llama4ImageTokenIds(**special))


def _image_config(model_dir: Path, vision: Llama4VisionConfig) -> Llama4ImageConfig:
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


def _image_prompt_tokens(config: Llama4Config, image_tiles: int) -> int:
    max_tiles = Llama4ImageConfig().max_patches
    if not 1 <= image_tiles <= max_tiles:
        raise ValueError(f"image_tiles must be 1..{max_tiles}, got {image_tiles}")
    # The count depends only on the number of local tiles, not on how they are arranged.
    return len(image_token_ids((1, image_tiles), config.vision.tokens_per_tile, LLAMA4_IMAGE_TOKEN_IDS))


def _describe_image(image_tokens: int, vision_blocks: int) -> str:
    return f"{image_tokens} image tokens"


LLAMA4 = ModelFamily(
    model_type="llama4",
    parse_config=parse_llama4_config,
    model_class=Llama4ForConditionalGeneration,
    special_tokens=LLAMA4_SPECIAL_TOKENS,
    render_chat=render_llama4_chat,
    tool_format=TOOL_FORMAT,
    image_prompts=_image_prompts,
    vision_state=EarlyFusionState,
    num_embeddings=lambda config: config.text.vocab_size,
    image_prompt_tokens=_image_prompt_tokens,
    describe_image=_describe_image,
)
