"""Llama 3.2 Vision (mllama) image preprocessing: tiling, resizing, normalization and cross-attention ranges.

Behaviour is defined by transformers' `MllamaImageProcessorPil` and `get_cross_attention_token_mask`; tests
compare against both.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmserve.multimodal.inputs import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_BILINEAR = 2
_REQUIRED_PREPROCESSOR_FLAGS = ("do_resize", "do_pad", "do_rescale", "do_normalize", "do_convert_rgb")


@dataclass(frozen=True)
class MllamaImageConfig:
    tile_size: int = 560
    max_image_tiles: int = 4
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        if self.tile_size <= 0 or self.max_image_tiles <= 0:
            raise ValueError(
                f"tile_size and max_image_tiles must be positive, got {self.tile_size} and {self.max_image_tiles}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or 0 in self.image_std:
            raise ValueError(
                f"image_mean and image_std need 3 values each, std non-zero; got {self.image_mean}, {self.image_std}"
            )

    @classmethod
    def from_model_dir(cls, path, vision_config: dict | None = None) -> "MllamaImageConfig":
        """Read `preprocessor_config.json` from a checkpoint dir, else take the tiling from `vision_config`."""
        config_file = Path(path) / "preprocessor_config.json"
        if config_file.is_file():
            return cls._from_preprocessor_config(json.loads(config_file.read_text()), config_file)
        if vision_config is None:
            return cls()
        return cls(tile_size=vision_config["image_size"], max_image_tiles=vision_config["max_num_tiles"])

    @classmethod
    def _from_preprocessor_config(cls, config: dict, source: Path) -> "MllamaImageConfig":
        size = config.get("size", {"height": cls.tile_size, "width": cls.tile_size})
        if size.get("height") != size.get("width"):
            raise ValueError(f"{source}: tiles must be square, got size {size}")
        if config.get("resample", PIL_BILINEAR) != PIL_BILINEAR:
            raise ValueError(f"{source}: only bilinear resampling (2) is supported, got {config['resample']}")
        disabled = [flag for flag in _REQUIRED_PREPROCESSOR_FLAGS if config.get(flag) is False]
        if disabled:
            raise ValueError(f"{source}: mllama preprocessing needs {', '.join(disabled)} enabled")
        return cls(
            tile_size=size["height"],
            max_image_tiles=config.get("max_image_tiles", cls.max_image_tiles),
            image_mean=tuple(config.get("image_mean", CLIP_MEAN)),
            image_std=tuple(config.get("image_std", CLIP_STD)),
            rescale_factor=config.get("rescale_factor", cls.rescale_factor),
        )


@dataclass
class ProcessedImage:
    pixel_values: torch.Tensor  # [max_image_tiles, 3, tile, tile] float32; missing tiles are 0.0
    aspect_ratio_id: int  # 1 + index into supported_aspect_ratios; 0 is reserved for padding images
    aspect_ratio_mask: torch.Tensor  # [max_image_tiles] int64, 1 for real tiles
    num_tiles: int


def supported_aspect_ratios(max_image_tiles: int) -> list[tuple[int, int]]:
    """All (tiles along height, tiles along width) with at most `max_image_tiles` tiles, in HF's order."""
    return [
        (num_high, num_wide)
        for num_high in range(1, max_image_tiles + 1)
        for num_wide in range(1, max_image_tiles + 1)
        if num_high * num_wide <= max_image_tiles
    ]


def optimal_tiled_canvas(height: int, width: int, max_image_tiles: int, tile_size: int) -> tuple[int, int]:
    """The (canvas_h, canvas_w) tile grid to resize an image into.

    Prefer the smallest upscale that fits the image; if every canvas needs a downscale, the mildest one.
    Ties go to the smallest canvas area, then to the earlier arrangement.
    """
    canvases = [(high * tile_size, wide * tile_size) for high, wide in supported_aspect_ratios(max_image_tiles)]
    scales = [min(canvas_h / height, canvas_w / width) for canvas_h, canvas_w in canvases]
    upscales = [scale for scale in scales if scale >= 1]
    selected = min(upscales) if upscales else max(scales)
    candidates = [canvas for canvas, scale in zip(canvases, scales) if scale == selected]
    return min(candidates, key=lambda canvas: canvas[0] * canvas[1])


def process_image(image: Image.Image, config: MllamaImageConfig, *, one_tile: bool = False) -> ProcessedImage:
    """Convert, resize, pad, normalize and tile one image as HF's `MllamaImageProcessorPil` does (`one_tile`: as if
    the model took one tile at most; the tensors keep the model's shape)."""
    image = to_rgb(image)
    tile = config.tile_size
    canvas_h, canvas_w = optimal_tiled_canvas(image.height, image.width, 1 if one_tile else config.max_image_tiles,
                                              tile)
    new_h, new_w = _size_fit_to_canvas(image.height, image.width, canvas_h, canvas_w, tile)
    resized = image.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)

    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)  # padding is black in pixel space
    canvas[:new_h, :new_w] = np.asarray(resized)
    normalized = _rescale_and_normalize(torch.from_numpy(canvas).permute(2, 0, 1), config)  # [3, H, W]

    num_high, num_wide = canvas_h // tile, canvas_w // tile
    num_tiles = num_high * num_wide
    tiles = normalized.reshape(3, num_high, tile, num_wide, tile).permute(1, 3, 0, 2, 4)
    pixel_values = torch.zeros(config.max_image_tiles, 3, tile, tile, dtype=torch.float32)
    pixel_values[:num_tiles] = tiles.reshape(num_tiles, 3, tile, tile)
    aspect_ratio_mask = torch.zeros(config.max_image_tiles, dtype=torch.int64)
    aspect_ratio_mask[:num_tiles] = 1
    aspect_ratio_id = 1 + supported_aspect_ratios(config.max_image_tiles).index((num_high, num_wide))
    return ProcessedImage(pixel_values, aspect_ratio_id, aspect_ratio_mask, num_tiles)


def stack_images(images: list[ProcessedImage]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack one prompt's images: pixel_values [I, T, 3, H, W], aspect_ratio_ids [I], aspect_ratio_mask [I, T]."""
    if not images:
        raise ValueError("stack_images needs at least one image")
    pixel_values = torch.stack([image.pixel_values for image in images])
    aspect_ratio_ids = torch.tensor([image.aspect_ratio_id for image in images], dtype=torch.int64)
    aspect_ratio_mask = torch.stack([image.aspect_ratio_mask for image in images])
    return pixel_values, aspect_ratio_ids, aspect_ratio_mask


def cross_attention_token_ranges(token_ids: list[int], image_token_id: int) -> list[tuple[int, int]]:
    """For each image token, the half-open range of token positions that attend to its image.

    An image covers tokens from its own marker up to the next marker, the last one to the end; markers that
    stand side by side all cover the text that follows their run.
    """
    ranges = []
    end = len(token_ids)
    next_location = None
    for location in reversed([i for i, token in enumerate(token_ids) if token == image_token_id]):
        if next_location is not None and next_location != location + 1:
            end = next_location
        ranges.append((location, end))
        next_location = location
    return ranges[::-1]


def _size_fit_to_canvas(height: int, width: int, canvas_h: int, canvas_w: int, tile: int) -> tuple[int, int]:
    # Keep the aspect ratio; upscale small images until one side reaches a tile, never past the canvas.
    target_h = min(max(height, tile), canvas_h)
    target_w = min(max(width, tile), canvas_w)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


def _rescale_and_normalize(pixels: torch.Tensor, config: MllamaImageConfig) -> torch.Tensor:
    # HF rescales in float64 then rounds to float32 before normalizing in float32; same order, same bits.
    rescaled = (pixels.to(torch.float64) * config.rescale_factor).to(torch.float32)
    mean = torch.tensor(config.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float32).view(3, 1, 1)
    return (rescaled - mean) / std
