"""How each model family puts images into a prompt: the tensors its vision encoder takes, and what becomes of the
`<|image|>` placeholders the chat format and raw prompts carry (one per image).

Images come as decoders (`OpenedImage.decode`), called one at a time: only one full-size decoded image is alive
at once, whatever the number of images."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from PIL import Image

from vlmserve.engine.sequence import MultiModalInputs
from vlmserve.multimodal.inputs import image_content_hash, to_rgb
from vlmserve.multimodal.llama4_processor import (
    Llama4ImageConfig,
    Llama4ImageTokenIds,
    expand_image_placeholders,
)
from vlmserve.multimodal.llama4_processor import process_image as process_llama4_image
from vlmserve.multimodal.mllama_processor import (
    MllamaImageConfig,
    cross_attention_token_ranges,
    process_image,
    stack_images,
)

ImageDecoder = Callable[[], Image.Image]
ONE_TILE_HASH_SUFFIX = ":one-tile"


class ImagePrompts(Protocol):
    """A family's way in for images: the input processor checks the placeholders, then calls `prepare`."""

    placeholder_id: int  # the token marking each image in a chat or raw prompt
    bos_after_leading_images: bool  # where a raw prompt's BOS goes when it starts with placeholders

    def prepare(self, token_ids: list[int], images: list[ImageDecoder], one_tile: Sequence[bool]
                ) -> tuple[list[int], MultiModalInputs]:
        """The prompt's final token ids and its images' encoder inputs (`one_tile`: per image, whether to process
        it as a single tile)."""


def _hash_and_process_each(decoders: list[ImageDecoder], one_tile: Sequence[bool],
                           process: Callable) -> tuple[list[str], list]:
    """Each image's content hash and processed form (`process(image, one_tile)`), in order. A one-tile image's
    hash differs from the same image's at full detail: its encoder output does."""
    pairs = [_hash_and_process(decode, one, process) for decode, one in zip(decoders, one_tile, strict=True)]
    return [digest for digest, _ in pairs], [processed for _, processed in pairs]


def _hash_and_process(decode: ImageDecoder, one_tile: bool, process: Callable):
    # The decoded image lives only in this frame, freed before the next one is decoded; a non-RGB original goes
    # as soon as its RGB conversion exists (the processors take an RGB image as is).
    image = decode()
    digest = image_content_hash(image) + (ONE_TILE_HASH_SUFFIX if one_tile else "")
    image = to_rgb(image)
    return digest, process(image, one_tile)


class MllamaImagePrompts:
    """Llama 3.2 Vision: each placeholder stays one token; the text after it cross-attends to its image's tiles.
    A raw prompt's BOS goes after any leading placeholders, as the reference processor places it."""

    bos_after_leading_images = True

    def __init__(self, image_config: MllamaImageConfig, image_token_id: int):
        self.image_config, self.placeholder_id = image_config, image_token_id

    def prepare(self, token_ids: list[int], images: list[ImageDecoder], one_tile: Sequence[bool]
                ) -> tuple[list[int], MultiModalInputs]:
        hashes, processed = _hash_and_process_each(
            images, one_tile, lambda image, one: process_image(image, self.image_config, one_tile=one))
        pixel_values, aspect_ratio_ids, aspect_ratio_mask = stack_images(processed)
        return token_ids, MultiModalInputs(
            pixel_values=pixel_values,
            aspect_ratio_ids=aspect_ratio_ids,
            aspect_ratio_mask=aspect_ratio_mask,
            num_tiles=[p.num_tiles for p in processed],
            token_ranges=cross_attention_token_ranges(token_ids, self.placeholder_id),
            content_hashes=hashes,
        )


class Llama4ImagePrompts:
    """Llama 4 (early fusion): each placeholder expands into the image's token layout, whose `<|patch|>` tokens
    take the vision encoder's features in place of embeddings. pixel_values: every image's tiles in prompt order
    [total tiles, 3, S, S]; token_ranges: each image's expanded span."""

    bos_after_leading_images = False

    def __init__(self, image_config: Llama4ImageConfig, token_ids: Llama4ImageTokenIds):
        self.image_config, self.token_ids = image_config, token_ids
        self.placeholder_id = token_ids.image

    def prepare(self, token_ids: list[int], images: list[ImageDecoder], one_tile: Sequence[bool]
                ) -> tuple[list[int], MultiModalInputs]:
        if self.token_ids.patch in token_ids:
            raise ValueError("the prompt already holds <|patch|> tokens; give one <|image|> placeholder per image")
        single = dataclasses.replace(self.image_config, max_patches=1)
        hashes, processed = _hash_and_process_each(
            images, one_tile, lambda image, one: process_llama4_image(image, single if one else self.image_config))
        expanded, spans = expand_image_placeholders(token_ids, [p.aspect_ratio for p in processed],
                                                    self.image_config.tokens_per_tile, self.token_ids)
        return expanded, MultiModalInputs(
            pixel_values=torch.cat([p.pixel_values for p in processed]),
            aspect_ratio_ids=None,
            aspect_ratio_mask=None,
            num_tiles=[p.num_tiles for p in processed],
            token_ranges=spans,
            content_hashes=hashes,
        )
