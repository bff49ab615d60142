"""Llama 4 image preprocessing (tiles, global thumbnail, bf16 pixels) and the image-token layout of the prompt.

Behaviour is defined by transformers' `Llama4ImageProcessor` (torchvision backend) and
`Llama4Processor._prompt_split_image`; tests compare against both (model_spec G.4, G.5).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlmserve.multimodal.inputs import row_strips, to_rgb

# torchvision resizes uint8 with torch's native uint8 kernel on these CPUs and through float32 + round elsewhere;
# the two differ by one grey level on ~15% of pixels, so we make the same choice.
_NATIVE_UINT8_BILINEAR_CPUS = ("AVX2", "AVX512")


@dataclass(frozen=True)
class Llama4ImageConfig:
    tile_size: int = 336
    patch_size: int = 14
    pixel_shuffle_ratio: float = 0.5
    max_patches: int = 16  # the most local tiles per image (HF's name)
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resize_to_max_canvas: bool = False

    def __post_init__(self):
        if min(self.tile_size, self.patch_size, self.max_patches) <= 0:
            raise ValueError(f"tile_size, patch_size and max_patches must be positive, got {self.tile_size}, "
                             f"{self.patch_size} and {self.max_patches}")
        if self.tile_size % self.patch_size:
            raise ValueError(f"tile_size {self.tile_size} is not a multiple of patch_size {self.patch_size}")
        shuffled_side = self.tile_size // self.patch_size * self.pixel_shuffle_ratio
        if not 0 < self.pixel_shuffle_ratio <= 1 or shuffled_side != int(shuffled_side):
            raise ValueError(f"pixel_shuffle_ratio {self.pixel_shuffle_ratio} must be in (0, 1] and turn the "
                             f"{self.tile_size // self.patch_size}-patch side into a whole number")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or 0 in self.image_std:
            raise ValueError(
                f"image_mean and image_std need 3 values each, std non-zero; got {self.image_mean}, {self.image_std}")
        if self.rescale_factor <= 0:
            raise ValueError(f"rescale_factor must be positive, got {self.rescale_factor}")

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one tile becomes after pixel shuffle (144 for 336-pixel tiles of 14-pixel patches)."""
        return int((self.tile_size // self.patch_size) ** 2 * self.pixel_shuffle_ratio ** 2)


@dataclass
class Llama4ProcessedImage:
    pixel_values: torch.Tensor  # [num_tiles, 3, tile, tile] bfloat16: local tiles row-major, then the global tile
    aspect_ratio: tuple[int, int]  # (tiles along height, tiles along width)

    @property
    def num_tiles(self) -> int:
        """Local tiles plus the global tile (present only when there is more than one local tile)."""
        return self.pixel_values.shape[0]


@dataclass(frozen=True)
class Llama4ImageTokenIds:
    image_start: int
    image_end: int
    image: int
    patch: int  # the positions the vision features are scattered into
    tile_x_separator: int
    tile_y_separator: int


LLAMA4_IMAGE_TOKEN_IDS = Llama4ImageTokenIds(
    image_start=200080, image_end=200081, image=200090, patch=200092, tile_x_separator=200084,
    tile_y_separator=200085,
)


def candidate_grids(max_patches: int) -> list[tuple[int, int]]:
    """Every (h_tiles, w_tiles) with at most `max_patches` tiles, in HF's order (grouped by aspect ratio)."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for num_tiles in range(max_patches, 0, -1):
        for high in (factor for factor in range(1, num_tiles + 1) if num_tiles % factor == 0):
            by_ratio.setdefault(high / (num_tiles // high), []).append((high, num_tiles // high))
    return [grid for grids in by_ratio.values() for grid in grids]


def best_fit_canvas(height: int, width: int, config: Llama4ImageConfig) -> tuple[int, int]:
    """The (canvas_h, canvas_w) in pixels to fit an image into without distortion.

    The smallest upscale if any canvas allows one (the largest with `resize_to_max_canvas`), else the mildest
    downscale; ties go to the smallest area, then to the earliest candidate. Scales are float32, as in HF.
    """
    canvases = torch.tensor(candidate_grids(config.max_patches)) * config.tile_size  # [N, 2] int64
    scales = torch.minimum(canvases[:, 0].float() / height, canvases[:, 1].float() / width)  # [N] float32
    upscales = scales[scales >= 1]
    if len(upscales):
        selected = upscales.max() if config.resize_to_max_canvas else upscales.min()
    else:
        selected = scales.max()
    chosen = canvases[scales == selected]
    canvas_h, canvas_w = chosen[torch.argmin(chosen[:, 0] * chosen[:, 1])].tolist()
    return canvas_h, canvas_w


def resized_size(height: int, width: int, canvas_h: int, canvas_w: int,
                 config: Llama4ImageConfig) -> tuple[int, int]:
    """The (height, width) the image is resized to before padding to the canvas.

    Aspect ratio kept, the non-limiting side floored, at least 1 pixel. Unless `resize_to_max_canvas`, an image
    is only upscaled until its short side reaches one tile. HF holds a side's target as a torch tensor when the
    canvas clips it (its scale is then float32) and as a Python int otherwise (float64); that decides the
    precision of the scale, of the comparison and of the floored product, and we follow it to the bit.
    """
    if config.resize_to_max_canvas:
        target_h, target_w, f32_h, f32_w = canvas_h, canvas_w, True, True
    else:
        reach_h, reach_w = max(height, config.tile_size), max(width, config.tile_size)
        target_h, target_w = min(reach_h, canvas_h), min(reach_w, canvas_w)
        f32_h, f32_w = canvas_h < reach_h, canvas_w < reach_w
    scale_h = np.float32(target_h) / np.float32(height) if f32_h else target_h / height
    scale_w = np.float32(target_w) / np.float32(width) if f32_w else target_w / width
    if f32_h or f32_w:
        width_limits = np.float32(scale_w) < np.float32(scale_h)
    else:
        width_limits = scale_w < scale_h
    if width_limits:
        return max(min(_floor_product(height, scale_w, f32_w), target_h), 1), target_w
    return target_h, max(min(_floor_product(width, scale_h, f32_h), target_w), 1)


def process_image(image: Image.Image, config: Llama4ImageConfig) -> Llama4ProcessedImage:
    """Convert, resize, pad, normalise and tile one image as HF's `Llama4ImageProcessor` does."""
    pixels = _chw_pixels(to_rgb(image))
    height, width = pixels.shape[-2:]
    canvas_h, canvas_w = best_fit_canvas(height, width, config)
    new_h, new_w = resized_size(height, width, canvas_h, canvas_w, config)
    canvas = F.pad(_resize(pixels, new_h, new_w), [0, canvas_w - new_w, 0, canvas_h - new_h])  # black, uint8
    tile = config.tile_size
    num_high, num_wide = canvas_h // tile, canvas_w // tile
    tiles = _rescale_and_normalize(canvas, config).reshape(3, num_high, tile, num_wide, tile)
    tiles = tiles.permute(1, 3, 0, 2, 4).reshape(num_high * num_wide, 3, tile, tile)
    if num_high * num_wide > 1:
        global_tile = _rescale_and_normalize(_resize(pixels, tile, tile), config)  # distorted to a square
        tiles = torch.cat([tiles, global_tile.unsqueeze(0)])
    return Llama4ProcessedImage(pixel_values=tiles, aspect_ratio=(num_high, num_wide))


def image_token_ids(aspect_ratio: tuple[int, int], tokens_per_tile: int, ids: Llama4ImageTokenIds) -> list[int]:
    """The tokens one image becomes in the prompt (model_spec G.5).

    `<|image_start|>`, then for more than one tile each row of tiles (x-separated, y-separator after the row),
    then `<|image|>` and the global (or only) tile, then `<|image_end|>`; a tile is `tokens_per_tile` patches.
    """
    num_high, num_wide = aspect_ratio
    tile = [ids.patch] * tokens_per_tile
    tokens = [ids.image_start]
    if num_high * num_wide > 1:
        row = [*tile, *([ids.tile_x_separator, *tile] * (num_wide - 1)), ids.tile_y_separator]
        tokens += row * num_high
    return [*tokens, ids.image, *tile, ids.image_end]


def expand_image_placeholders(token_ids: list[int], aspect_ratios: list[tuple[int, int]], tokens_per_tile: int,
                              ids: Llama4ImageTokenIds) -> tuple[list[int], list[tuple[int, int]]]:
    """Replace the prompt's `<|image|>` placeholders, in order, with the expansion of each image; also returns each
    image's half-open span in the expanded prompt."""
    num_placeholders = token_ids.count(ids.image)
    if num_placeholders != len(aspect_ratios):
        raise ValueError(f"the prompt has {num_placeholders} <|image|> placeholders (id {ids.image}) but "
                         f"{len(aspect_ratios)} images were given; they must match")
    expansions = iter(aspect_ratios)
    expanded, spans = [], []
    for token in token_ids:
        if token != ids.image:
            expanded.append(token)
            continue
        image = image_token_ids(next(expansions), tokens_per_tile, ids)
        spans.append((len(expanded), len(expanded) + len(image)))
        expanded += image
    return expanded, spans


def _floor_product(side: int, scale, in_float32: bool) -> int:
    return math.floor(np.float32(side) * np.float32(scale) if in_float32 else side * scale)


def _chw_pixels(image: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8 of an RGB image, filled a strip of rows at a time: np.array(image) makes full-size copies."""
    pixels = torch.empty((3, image.height, image.width), dtype=torch.uint8)
    for top, strip in row_strips(image):
        pixels[:, top:top + strip.height] = torch.from_numpy(np.array(strip)).permute(2, 0, 1)
    return pixels


def _resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, H, W] uint8 -> [3, height, width] uint8, antialiased bilinear as torchvision resizes on CPU."""
    if tuple(pixels.shape[-2:]) == (height, width):
        return pixels
    batch = pixels.unsqueeze(0)
    if torch.backends.cpu.get_cpu_capability() in _NATIVE_UINT8_BILINEAR_CPUS:
        resized = F.interpolate(batch, size=[height, width], mode="bilinear", align_corners=False, antialias=True)
    else:
        resized = F.interpolate(batch.float(), size=[height, width], mode="bilinear", align_corners=False,
                                antialias=True).round_().to(torch.uint8)
    return resized[0]


def _rescale_and_normalize(pixels: torch.Tensor, config: Llama4ImageConfig) -> torch.Tensor:
    # HF rescales and normalises in bfloat16, as Meta's reference did; same ops, same rounding.
    rescaled = pixels.to(torch.bfloat16) * config.rescale_factor
    mean = torch.tensor(config.image_mean, dtype=torch.bfloat16).view(3, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.bfloat16).view(3, 1, 1)
    return (rescaled - mean) / std
