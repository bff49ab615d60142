"""Llama 3.2 Vision: the text cross-attends to each image's tiles, whose K/V are kept in the KV pool."""

from pathlib import Path

from vlmserve.engine.image_prompts import MllamaImagePrompts
from vlmserve.engine.vision_state import VisionState
from vlmserve.families.base import ModelFamily
from vlmserve.models.mllama import MllamaForConditionalGeneration
from vlmserve.models.mllama_config import MllamaConfig, parse_mllama_config
from vlmserve.multimodal.mllama_processor import MllamaImageConfig
from vlmserve.tokenizer.chat_format import TOOL_FORMAT, render_chat
from vlmserve.tokenizer.tokenizer import LLAMA3_SPECIAL_TOKENS, Tokenizer


def _image_prompts(model_dir: Path, config: MllamaConfig, tokenizer: Tokenizer) -> MllamaImagePrompts:
    vision = config.vision
    image_config = MllamaImageConfig.from_model_dir(
        model_dir, {"image_size": vision.image_size, "max_num_tiles": vision.max_num_tiles})
    return MllamaImagePrompts(image_config, config.image_token_index)


def _image_prompt_tokens(config: MllamaConfig, image_tiles: int) -> int:
    """0: an image is its one placeholder token, already among the prompt's text tokens."""
    if not 1 <= image_tiles <= config.vision.max_num_tiles:
        raise ValueError(f"image_tiles must be 1..{config.vision.max_num_tiles}, got {image_tiles}")
    return 0


def _describe_image(image_tokens: int, vision_blocks: int) -> str:
    return f"its image's cross-attention K/V ({vision_blocks} blocks: all tiles, padded ones included)"


MLLAMA = ModelFamily(
    model_type="mllama",
    parse_config=parse_mllama_config,
    model_class=MllamaForConditionalGeneration,
    special_tokens=LLAMA3_SPECIAL_TOKENS,
    render_chat=render_chat,
    tool_format=TOOL_FORMAT,
    image_prompts=_image_prompts,
    vision_state=VisionState,
    num_embeddings=lambda config: config.text.vocab_size + 8,
    image_prompt_tokens=_image_prompt_tokens,
    describe_image=_describe_image,
)
