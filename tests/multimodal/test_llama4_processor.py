"""Parity of the Llama 4 image processor and image-token layout with transformers (model_spec G.4, G.5).

HF's `Llama4ImageProcessor` needs torchvision; it runs in a child interpreter over a torchvision stand-in (see
tests/multimodal/hf_llama4_reference.py and torchvision_standin.py). Pixel values must match to the bit.
"""

import dataclasses

import numpy as np
import pytest
import torch
from transformers.models.llama4.processing_llama4 import Llama4Processor

from tests.multimodal.hf_llama4_reference import ImageSpec, ProcessorSettings, hf_reference, random_image
from vlmserve.multimodal import inputs
from vlmserve.multimodal.llama4_processor import (
    LLAMA4_IMAGE_TOKEN_IDS,
    Llama4ImageConfig,
    best_fit_canvas,
    candidate_grids,
    expand_image_placeholders,
    image_token_ids,
    process_image,
    resized_size,
)
from vlmserve.tokenizer.llama4_standin import build_llama4_standin_tokenizer

pytestmark = pytest.mark.parity
REAL = ProcessorSettings(tile_size=336, max_patches=16)
SMALL = ProcessorSettings(tile_size=28, max_patches=4)
SMALL_MAX_CANVAS = ProcessorSettings(tile_size=28, max_patches=5, resize_to_max_canvas=True)
ONE_TILE = ProcessorSettings(tile_size=28, max_patches=1)  # what detail "low" makes of SMALL
ONE_TILE_SIZES = [(28, 28), (28, 112), (90, 31), (300, 200)]
CONFIGS = {
    REAL: Llama4ImageConfig(),
    SMALL: Llama4ImageConfig(tile_size=28, patch_size=7, max_patches=4),
    SMALL_MAX_CANVAS: Llama4ImageConfig(tile_size=28, patch_size=7, max_patches=5, resize_to_max_canvas=True),
}
RNG = np.random.default_rng(2024)
REAL_SIZES = [  # (height, width): tiny sides, very wide/tall, exact multiples, 16 tiles, float32 edge cases
    (1, 1), (7, 13), (200, 300), (335, 337), (336, 336), (336, 672), (672, 336), (600, 1000), (768, 1024),
    (100, 2000), (2000, 100), (5, 3000), (3000, 5), (1008, 1008), (1344, 1344), (2000, 3000), (336, 5376),
    (5376, 336), (2212, 2133), (1876, 1407), (700, 500),
] + [tuple(int(side) for side in size) for size in RNG.integers(1, 3000, (6, 2))]
SMALL_SIZES = [(28, 28), (28, 112), (112, 28), (56, 56), (318, 318), (1, 90)] + [
    tuple(int(side) for side in size) for size in RNG.integers(1, 300, (24, 2))]
MAX_CANVAS_SIZES = [tuple(int(side) for side in size) for size in RNG.integers(1, 200, (10, 2))]
MODES = ["RGBA", "L", "P"]
MULTI_IMAGE = [ImageSpec(50, 90), ImageSpec(20, 20), ImageSpec(90, 31, "RGBA")]
# Sizes where float64 arithmetic would pick another resized side than HF's float32 tensors do.
FLOAT32_EDGE_SIZES = {REAL: [(4908, 3272), (4249, 607), (992, 2573), (3156, 5523), (2212, 2133), (1876, 1407)],
                      SMALL: [(318, 318), (332, 581), (3088, 2702), (1372, 5047)]}
GEOMETRY = [(settings, height, width) for settings, sizes in FLOAT32_EDGE_SIZES.items() for height, width in sizes]
GEOMETRY += [(settings, int(height), int(width)) for settings in CONFIGS
             for height, width in RNG.integers(1, 6000, (300, 2))]

BATCHES = ([(REAL, [ImageSpec(*size)]) for size in REAL_SIZES]
           + [(SMALL, [ImageSpec(*size)]) for size in SMALL_SIZES]
           + [(SMALL_MAX_CANVAS, [ImageSpec(*size)]) for size in MAX_CANVAS_SIZES]
           + [(SMALL, [ImageSpec(45, 70, mode)]) for mode in MODES]
           + [(SMALL, MULTI_IMAGE)]
           + [(ONE_TILE, [ImageSpec(*size)]) for size in ONE_TILE_SIZES])


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """HF's outputs, keyed like BATCHES and GEOMETRY."""
    reference = hf_reference(BATCHES, GEOMETRY, tmp_path_factory.mktemp("hf_llama4"))
    return {"batches": dict(zip(map(_batch_key, BATCHES), reference["batches"])),
            "geometry": dict(zip(GEOMETRY, reference["geometry"]))}


def _batch_key(batch: tuple[ProcessorSettings, list[ImageSpec]]) -> tuple:
    settings, specs = batch
    return settings, tuple(specs)


def assert_image_matches_hf(settings: ProcessorSettings, spec: ImageSpec, hf):
    expected_pixels, expected_ratios = hf["batches"][settings, (spec,)]
    processed = process_image(random_image(spec), CONFIGS[settings])
    assert processed.pixel_values.dtype == torch.bfloat16
    assert processed.aspect_ratio == tuple(expected_ratios[0].tolist())
    assert processed.num_tiles == expected_pixels.shape[0]
    assert torch.equal(processed.pixel_values, expected_pixels)


@pytest.mark.parametrize("size", REAL_SIZES, ids=str)
def test_real_tile_size_matches_hf_bitwise(size, hf):
    assert_image_matches_hf(REAL, ImageSpec(*size), hf)


def test_small_tiles_match_hf_bitwise(hf):
    for size in SMALL_SIZES:
        assert_image_matches_hf(SMALL, ImageSpec(*size), hf)


def test_resize_to_max_canvas_matches_hf_bitwise(hf):
    for size in MAX_CANVAS_SIZES:
        assert_image_matches_hf(SMALL_MAX_CANVAS, ImageSpec(*size), hf)


@pytest.mark.parametrize("mode", MODES)
def test_modes_convert_to_rgb_as_hf_does(mode, hf):
    assert_image_matches_hf(SMALL, ImageSpec(45, 70, mode), hf)


@pytest.mark.parametrize("spec", [ImageSpec(318, 318)] + [ImageSpec(45, 70, mode) for mode in MODES], ids=str)
def test_pixels_gathered_in_row_strips_match_hf(spec, hf, monkeypatch):
    monkeypatch.setattr(inputs, "STRIP_PIXELS", 100)  # strips of one to three rows
    assert_image_matches_hf(SMALL, spec, hf)


def test_images_concatenate_like_hf_batch(hf):
    expected_pixels, expected_ratios = hf["batches"][SMALL, tuple(MULTI_IMAGE)]
    processed = [process_image(random_image(spec), CONFIGS[SMALL]) for spec in MULTI_IMAGE]
    assert torch.equal(torch.cat([image.pixel_values for image in processed]), expected_pixels)
    assert [image.aspect_ratio for image in processed] == [tuple(ratio) for ratio in expected_ratios.tolist()]


def test_canvas_and_resized_size_match_hf_including_float32_edges(hf):
    for settings, height, width in GEOMETRY:
        config = CONFIGS[settings]
        canvas = best_fit_canvas(height, width, config)
        assert (canvas, resized_size(height, width, *canvas, config)) == hf["geometry"][settings, height, width]


def test_float32_edge_follows_hf_not_exact_arithmetic():
    # 2133 * 1344 / 2212 is exactly 1296, but both sides are clipped by the canvas, so HF scales in float32:
    # 2133 * float32(1344 / 2212) = 1295.9999 and the width floors to 1295.
    config = Llama4ImageConfig()
    canvas = best_fit_canvas(2212, 2133, config)
    assert canvas == (1344, 1344)
    assert 2133 * 1344 // 2212 == 1296
    assert resized_size(2212, 2133, *canvas, config) == (1344, 1295)


@pytest.mark.parametrize("size, canvas, resized, num_tiles", [  # model_spec G.4 worked examples
    ((336, 336), (336, 336), (336, 336), 1),
    ((200, 300), (336, 336), (224, 336), 1),
    ((600, 1000), (672, 1008), (600, 1000), 7),
    ((2000, 3000), (1008, 1680), (1008, 1512), 16),
    ((768, 1024), (1008, 1344), (768, 1024), 13),
    ((100, 2000), (336, 2016), (100, 2000), 7),
])
def test_spec_worked_examples(size, canvas, resized, num_tiles):
    config = Llama4ImageConfig()
    assert best_fit_canvas(*size, config) == canvas
    assert resized_size(*size, *canvas, config) == resized
    grid = (canvas[0] // 336) * (canvas[1] // 336)
    assert grid + (grid > 1) == num_tiles


def test_candidate_grids():
    grids = candidate_grids(16)
    assert len(grids) == 50 and len(set(grids)) == 50
    assert grids[:4] == [(1, 16), (2, 8), (1, 4), (4, 4)]  # grouped by aspect ratio: 1x4 joins 2x8
    assert all(high * wide <= 16 for high, wide in grids)
    assert candidate_grids(1) == [(1, 1)]


def test_single_tile_has_no_global_tile_and_padding_is_black():
    processed = process_image(random_image(ImageSpec(14, 28)), Llama4ImageConfig(tile_size=28, patch_size=7))
    assert processed.aspect_ratio == (1, 1) and processed.num_tiles == 1
    assert processed.pixel_values.shape == (1, 3, 28, 28)
    assert torch.all(processed.pixel_values[0, :, 14:, :] == -1)  # black after (x/255 - 0.5) / 0.5


def test_multi_tile_image_ends_with_its_global_tile():
    processed = process_image(random_image(ImageSpec(56, 84)), Llama4ImageConfig(tile_size=28, patch_size=7))
    assert processed.aspect_ratio == (2, 3)
    assert processed.pixel_values.shape == (7, 3, 28, 28)


# --- image-token layout (G.5) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin():
    return build_llama4_standin_tokenizer()


@pytest.mark.parametrize("aspect_ratio", [(1, 1), (1, 2), (2, 1), (2, 3), (3, 5), (4, 4), (1, 16)])
@pytest.mark.parametrize("tokens_per_tile", [144, 4])
def test_image_tokens_match_hf_prompt_split(aspect_ratio, tokens_per_tile, standin):
    # _prompt_split_image reads no processor state, so it runs without an instance (and without torchvision).
    text = Llama4Processor._prompt_split_image(None, aspect_ratio, tokens_per_tile)
    expected = standin.encode(text, add_special_tokens=False).ids
    assert image_token_ids(aspect_ratio, tokens_per_tile, LLAMA4_IMAGE_TOKEN_IDS) == expected


def test_image_token_counts_from_the_spec():
    config = Llama4ImageConfig()
    assert config.tokens_per_tile == 144
    assert len(image_token_ids((2, 3), 144, LLAMA4_IMAGE_TOKEN_IDS)) == 1017  # 600x1000
    assert len(image_token_ids((1, 1), 144, LLAMA4_IMAGE_TOKEN_IDS)) == 147
    for high, wide in [(2, 3), (3, 5), (4, 4), (1, 6)]:
        count = 1 + high * wide * 144 + high * (wide - 1) + high + 1 + 144 + 1
        assert len(image_token_ids((high, wide), 144, LLAMA4_IMAGE_TOKEN_IDS)) == count


def test_image_token_layout_written_out():
    ids = LLAMA4_IMAGE_TOKEN_IDS
    start, end, image, patch, x_sep, y_sep = 200080, 200081, 200090, 200092, 200084, 200085
    assert (ids.image_start, ids.image_end, ids.image, ids.patch, ids.tile_x_separator,
            ids.tile_y_separator) == (start, end, image, patch, x_sep, y_sep)
    assert image_token_ids((1, 1), 2, ids) == [start, image, patch, patch, end]
    assert image_token_ids((1, 2), 1, ids) == [start, patch, x_sep, patch, y_sep, image, patch, end]
    assert image_token_ids((2, 1), 1, ids) == [start, patch, y_sep, patch, y_sep, image, patch, end]


def test_expand_image_placeholders_in_order():
    ids = LLAMA4_IMAGE_TOKEN_IDS
    prompt = [200000, 11, ids.image, 12, ids.image, 13]
    expanded, spans = expand_image_placeholders(prompt, [(1, 2), (1, 1)], 3, ids)
    first, second = image_token_ids((1, 2), 3, ids), image_token_ids((1, 1), 3, ids)
    assert expanded == [200000, 11, *first, 12, *second, 13]
    assert expanded.count(ids.image) == 2  # each expansion's own <|image|> stays as it is
    assert [expanded[a:b] for a, b in spans] == [first, second]


def test_expand_without_images_is_identity():
    assert expand_image_placeholders([1, 2, 3], [], 144, LLAMA4_IMAGE_TOKEN_IDS) == ([1, 2, 3], [])


@pytest.mark.parametrize("num_placeholders, aspect_ratios", [(2, [(1, 1)]), (0, [(1, 1)]), (1, [])])
def test_expand_refuses_a_count_mismatch(num_placeholders, aspect_ratios):
    prompt = [7] + [LLAMA4_IMAGE_TOKEN_IDS.image] * num_placeholders
    with pytest.raises(ValueError, match=f"{num_placeholders} <\\|image\\|> placeholders .* {len(aspect_ratios)} "
                                         "images"):
        expand_image_placeholders(prompt, aspect_ratios, 144, LLAMA4_IMAGE_TOKEN_IDS)


# --- config -----------------------------------------------------------------------------------------------


def test_config_tokens_per_tile():
    assert Llama4ImageConfig(tile_size=28, patch_size=7).tokens_per_tile == 4
    assert Llama4ImageConfig(tile_size=28, patch_size=7, pixel_shuffle_ratio=1.0).tokens_per_tile == 16


@pytest.mark.parametrize("kwargs, match", [
    ({"tile_size": 0}, "must be positive"),
    ({"max_patches": 0}, "must be positive"),
    ({"tile_size": 30, "patch_size": 7}, "tile_size 30 is not a multiple of patch_size 7"),
    ({"tile_size": 21, "patch_size": 7}, "pixel_shuffle_ratio 0.5"),
    ({"pixel_shuffle_ratio": 0.0}, "pixel_shuffle_ratio 0.0"),
    ({"image_std": (0.5, 0.0, 0.5)}, "std non-zero"),
    ({"image_mean": (0.5, 0.5)}, "3 values each"),
    ({"rescale_factor": 0.0}, "rescale_factor must be positive"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Llama4ImageConfig(**kwargs)


@pytest.mark.parametrize("size", ONE_TILE_SIZES, ids=str)
def test_one_tile_is_the_reference_with_one_patch_at_most(size, hf):
    expected_pixels, _ = hf["batches"][ONE_TILE, (ImageSpec(*size),)]
    processed = process_image(random_image(ImageSpec(*size)), dataclasses.replace(CONFIGS[SMALL], max_patches=1))
    assert processed.num_tiles == 1 and processed.aspect_ratio == (1, 1)
    assert torch.equal(processed.pixel_values, expected_pixels)
