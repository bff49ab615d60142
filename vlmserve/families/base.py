"""ModelFamily: what differs between the model families we serve, one record per family (`model_type`)."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vlmserve.engine.image_prompts import ImagePrompts
from vlmserve.engine.vision_inputs import VisionInputs
from vlmserve.tokenizer.chat_messages import RenderedChat
from vlmserve.tokenizer.tokenizer import SpecialTokens, Tokenizer
from vlmserve.tool_calls.types import ToolCallFormat


@dataclass(frozen=True)
class ModelFamily:
    """A `config` below is the typed config `parse_config` makes."""

    model_type: str  # config.json's model_type, and special_tokens.family
    parse_config: Callable[[dict[str, Any]], Any]  # config.json -> typed config; raises ConfigError
    model_class: type[nn.Module]  # (config, transformers_compat=, tp=)
    special_tokens: SpecialTokens
    # (messages, *, add_generation_prompt, continue_final_message, date_string, tools) -> the chat in this format
    render_chat: Callable[..., RenderedChat]
    tool_format: ToolCallFormat  # how the model writes tool calls, which render_chat asks of it
    image_prompts: Callable[[Path, Any, Tokenizer], ImagePrompts]  # (model dir, config, tokenizer)
    vision_state: type[VisionInputs]  # where image features go: cross-attention K/V, or embeddings in place
    num_embeddings: Callable[[Any], int]  # rows of the embedding table: the prompt ids it accepts
    # (config, tiles) -> prompt tokens one image of that many tiles adds; ValueError past the family's tile limit
    image_prompt_tokens: Callable[[Any, int], int]
    describe_image: Callable[[int, int], str]  # (image tokens, vision blocks) -> what one image adds to a request
