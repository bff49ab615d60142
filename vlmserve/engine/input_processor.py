"""Turns what a user sends (chat messages, a prompt string, token ids; images) into engine inputs."""

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from vlmserve.engine.image_prompts import Llama4ImagePrompts, MllamaImagePrompts
from vlmserve.engine.sequence import MultiModalInputs
from vlmserve.families.chat import encode_chat
from vlmserve.multimodal.inputs import ImageInputError, OneTile, OpenedImage, open_image
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

    @property
    def num_image_tiles(self) -> int:
        """The tiles the images were cut into (Llama 4's global tiles included)."""
        return sum(self.multimodal.num_tiles) if self.multimodal else 0


class InputProcessor:
    def __init__(self, tokenizer: Tokenizer, image_prompts: MllamaImagePrompts | Llama4ImagePrompts, *,
                 num_embeddings: int, max_image_pixels: int, max_request_pixels: int):
        self.tokenizer = tokenizer
        self.image_prompts = image_prompts
        self.num_embeddings = num_embeddings
        self.max_image_pixels = max_image_pixels
        self.max_request_pixels = max_request_pixels

    def process_chat(self, messages: list[dict], **chat_options) -> PreparedInput:
        """OpenAI-style messages -> the model's chat format, images in the order they appear."""
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
        return self._prepare(self.tokenizer.encode(self.with_bos(text)), images, prompt=text)

    def with_bos(self, text: str) -> str:
        """A raw prompt with its BOS where the family's reference processor puts it, unless already present."""
        return with_bos(text, self.image_prompts.bos_after_leading_images)

    def _prepare(self, token_ids: list[int], image_sources: list, prompt: str | None) -> PreparedInput:
        if not token_ids:
            raise InputError("the prompt is empty")
        bad = [t for t in token_ids if not (isinstance(t, int) and 0 <= t < self.num_embeddings)]
        if bad:
            raise InputError(f"prompt token id {bad[0]!r} is outside the model's vocabulary [0, {self.num_embeddings})")
        num_markers = token_ids.count(self.image_prompts.placeholder_id)
        if num_markers != len(image_sources):
            raise InputError(
                f"the prompt has {num_markers} {IMAGE} marker(s) but {len(image_sources)} image(s) were given"
            )
        if not image_sources:
            return PreparedInput(prompt_token_ids=token_ids, prompt=prompt)
        one_tile = [isinstance(source, OneTile) for source in image_sources]
        with ExitStack() as stack:
            images = [stack.enter_context(open_image(source.source if one else source,
                                                     max_pixels=self.max_image_pixels))
                      for source, one in zip(image_sources, one_tile)]
            self._check_request_pixels(images)
            try:  # one image decoded at a time, each dropped before the next is decoded
                token_ids, multimodal = self.image_prompts.prepare(token_ids, [image.decode for image in images],
                                                                   one_tile)
            except ImageInputError:  # a corrupt image, found as it is decoded
                raise
            except ValueError as err:
                raise InputError(str(err)) from None
        return PreparedInput(prompt_token_ids=token_ids, multimodal=multimodal, prompt=prompt)

    def _check_request_pixels(self, images: list[OpenedImage]) -> None:
        total = sum(image.num_pixels for image in images)
        if total > self.max_request_pixels:
            raise InputError(f"the request's images have {total} pixels in all; at most "
                             f"{self.max_request_pixels} are allowed per request (max_request_pixels)")


def with_bos(text: str, after_leading_images: bool = True) -> str:
    """Prepend the BOS unless present; Llama 3.2 Vision's processor puts it after any leading image markers."""
    if BOS in text:
        return text
    rest = text
    while after_leading_images and rest.startswith(IMAGE):
        rest = rest[len(IMAGE):]
    return text[: len(text) - len(rest)] + BOS + rest
