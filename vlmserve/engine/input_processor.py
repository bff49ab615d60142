"""Turns what a user sends (chat messages, a prompt string, token ids; images) into engine inputs."""

from dataclasses import dataclass
from typing import Any

from vlmserve.engine.sequence import MultiModalInputs
from vlmserve.multimodal.inputs import image_content_hash, load_image
from vlmserve.multimodal.mllama_processor import (
    MllamaImageConfig,
    cross_attention_token_ranges,
    process_image,
    stack_images,
)
from vlmserve.tokenizer.chat_format import encode_chat
from vlmserve.tokenizer.tokenizer import Tokenizer

BOS = "<|begin_of_text|>"
IMAGE = "<|image|>"


class InputError(ValueError):
    """A prompt the model cannot take (wrong image count, unknown token ids, empty prompt...)."""


@dataclass
class PreparedInput:
    prompt_token_ids: list[int]
    multimodal: MultiModalInputs | None = None
    prompt: str | None = None

    @property
    def num_images(self) -> int:
        return len(self.multimodal.num_tiles) if self.multimodal else 0


class InputProcessor:
    def __init__(self, tokenizer: Tokenizer, image_config: MllamaImageConfig, *, num_embeddings: int,
                 image_token_id: int, max_image_pixels: int):
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id  # the model config's, which a test checkpoint may move
        self.image_config = image_config
        self.num_embeddings = num_embeddings
        self.max_image_pixels = max_image_pixels

    def process_chat(self, messages: list[dict], **chat_options) -> PreparedInput:
        """OpenAI-style messages -> the Llama 3.2 Vision chat format, images in the order they appear."""
        token_ids, images = encode_chat(self.tokenizer, messages, **chat_options)
        return self._prepare(token_ids, images, prompt=None)

    def process_prompt(self, prompt: str | dict[str, Any]) -> PreparedInput:
        """A string, {"prompt": str, "images": [...]} or {"prompt_token_ids": [...], "images": [...]}."""
        if isinstance(prompt, str):
            prompt = {"prompt": prompt}
        if not isinstance(prompt, dict):
            raise InputError(f"a prompt must be a string or a dict, got {type(prompt).__name__}")
        unknown = set(prompt) - {"prompt", "prompt_token_ids", "images", "multi_modal_data"}
        if unknown:
            raise InputError(f"unknown prompt field(s): {', '.join(sorted(unknown))}")
        images = prompt.get("images") or (prompt.get("multi_modal_data") or {}).get("image") or []
        if not isinstance(images, list):
            images = [images]
        if "prompt_token_ids" in prompt:
            return self._prepare(list(prompt["prompt_token_ids"]), images, prompt=None)
        if "prompt" not in prompt:
            raise InputError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        text = prompt["prompt"]
        return self._prepare(self.tokenizer.encode(with_bos(text)), images, prompt=text)

    def _prepare(self, token_ids: list[int], image_sources: list, prompt: str | None) -> PreparedInput:
        if not token_ids:
            raise InputError("the prompt is empty")
        bad = [t for t in token_ids if not (isinstance(t, int) and 0 <= t < self.num_embeddings)]
        if bad:
            raise InputError(f"prompt token id {bad[0]!r} is outside the model's vocabulary [0, {self.num_embeddings})")
        num_markers = token_ids.count(self.image_token_id)
        if num_markers != len(image_sources):
            raise InputError(
                f"the prompt has {num_markers} {IMAGE} marker(s) but {len(image_sources)} image(s) were given"
            )
        multimodal = self._multimodal(token_ids, image_sources) if image_sources else None
        return PreparedInput(prompt_token_ids=token_ids, multimodal=multimodal, prompt=prompt)

    def _multimodal(self, token_ids: list[int], image_sources: list) -> MultiModalInputs:
        images = [load_image(source, max_pixels=self.max_image_pixels) for source in image_sources]
        processed = [process_image(image, self.image_config) for image in images]
        pixel_values, aspect_ratio_ids, aspect_ratio_mask = stack_images(processed)
        return MultiModalInputs(
            pixel_values=pixel_values,
            aspect_ratio_ids=aspect_ratio_ids,
            aspect_ratio_mask=aspect_ratio_mask,
            num_tiles=[p.num_tiles for p in processed],
            token_ranges=cross_attention_token_ranges(token_ids, self.image_token_id),
            content_hashes=[image_content_hash(image) for image in images],
        )


def with_bos(text: str) -> str:
    """Place the BOS as the reference processor does: after any leading image markers, unless present."""
    if BOS in text:
        return text
    rest = text
    while rest.startswith(IMAGE):
        rest = rest[len(IMAGE):]
    return text[: len(text) - len(rest)] + BOS + rest
