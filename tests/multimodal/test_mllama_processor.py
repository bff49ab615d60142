"""Parity of the mllama image processor and cross-attention ranges with transformers (PIL backend)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageMode
from transformers.models.mllama import image_processing_pil_mllama as hf_image
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
from transformers.models.mllama.processing_mllama import get_cross_attention_token_mask

from vlmserve.multimodal import inputs
from vlmserve.multimodal.mllama_processor import (
    CLIP_MEAN,
    CLIP_STD,
    MllamaImageConfig,
    cross_attention_token_ranges,
    optimal_tiled_canvas,
    process_image,
    stack_images,
    supported_aspect_ratios,
)
from vlmserve.multimodal.inputs import to_rgb

pytestmark = pytest.mark.parity
ATOL = 1e-5
SEED = 1234
EDGE_SIZES = [  # (height, width)
    (1, 1), (1, 2000), (2000, 1), (30, 3000), (3000, 30), (7, 13), (300, 500), (1000, 400), (100, 2000),
    (800, 1200), (600, 1000), (560, 560), (1120, 560), (560, 1680), (1120, 1120), (2240, 560), (559, 561),
    (561, 559), (1500, 1499),
]
RANDOM_SIZES = [(int(height), int(width)) for height, width in np.random.default_rng(SEED).integers(1, 1500, (8, 2))]
MODES = ["RGBA", "LA", "P", "P-transparent", "L", "CMYK", "RGB-transparent", "1"]


def hf_processor(tile_size: int, max_image_tiles: int) -> MllamaImageProcessorPil:
    return MllamaImageProcessorPil(
        size={"height": tile_size, "width": tile_size}, max_image_tiles=max_image_tiles, image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD), resample=Image.Resampling.BILINEAR, rescale_factor=1 / 255,
    )


@pytest.fixture(scope="module")
def hf_real():
    return hf_processor(560, 4)


def random_image(height: int, width: int, mode: str = "RGB", seed: int = SEED) -> Image.Image:
    rng = np.random.default_rng(seed + 7 * height + width)
    if mode in ("P", "P-transparent"):
        image = Image.frombytes("P", (width, height), rng.integers(0, 16, (height, width), dtype=np.uint8).tobytes())
        image.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tobytes())
        if mode == "P-transparent":
            image.info["transparency"] = 3
        return image
    if mode == "RGB-transparent":
        image = Image.fromarray(rng.integers(0, 2, (height, width, 3), dtype=np.uint8) * 255)
        image.info["transparency"] = (255, 0, 255)
        return image
    if mode == "1":
        return random_image(height, width, "L", seed).convert("1")
    pixels = rng.integers(0, 256, (height, width, len(ImageMode.getmode(mode).bands)), dtype=np.uint8)
    return Image.frombytes(mode, (width, height), pixels.tobytes())


def assert_matches_hf(image: Image.Image, config: MllamaImageConfig, hf: MllamaImageProcessorPil):
    expected = hf(images=[[image]], return_tensors="pt")
    processed = process_image(image, config)
    assert processed.pixel_values.dtype == torch.float32
    assert processed.pixel_values.shape == (config.max_image_tiles, 3, config.tile_size, config.tile_size)
    torch.testing.assert_close(processed.pixel_values, expected["pixel_values"][0, 0], atol=ATOL, rtol=0)
    assert processed.aspect_ratio_id == expected["aspect_ratio_ids"][0, 0].item()
    assert torch.equal(processed.aspect_ratio_mask, expected["aspect_ratio_mask"][0, 0])
    assert processed.num_tiles == expected["num_tiles"][0][0]


@pytest.mark.parametrize("size", EDGE_SIZES + RANDOM_SIZES, ids=str)
def test_rgb_matches_hf_at_real_tile_size(size, hf_real):
    assert_matches_hf(random_image(*size), MllamaImageConfig(), hf_real)


@pytest.mark.parametrize("mode", MODES)
def test_modes_convert_to_rgb_as_hf_does(mode, hf_real):
    assert_matches_hf(random_image(90, 130, mode), MllamaImageConfig(), hf_real)


@pytest.mark.parametrize("mode", MODES)
def test_modes_convert_in_row_strips_as_hf_does(mode, hf_real, monkeypatch):
    monkeypatch.setattr(inputs, "STRIP_PIXELS", 200)  # strips of one or two rows
    image = random_image(90, 130, mode)
    if "A" in image.getbands() or "transparency" in image.info:  # converted whole, as HF does
        whole = Image.alpha_composite(Image.new("RGBA", image.size, (255,) * 4), image.convert("RGBA")).convert("RGB")
    else:
        whole = image.convert("RGB")
    assert to_rgb(image).tobytes() == whole.tobytes()
    assert_matches_hf(image, MllamaImageConfig(), hf_real)


def test_rgb_image_is_used_as_is():
    image = random_image(20, 30)
    assert to_rgb(image) is image


def test_pixel_values_are_bitwise_equal_to_hf(hf_real):
    image = random_image(700, 900)
    expected = hf_real(images=[[image]], return_tensors="pt")["pixel_values"][0, 0]
    assert torch.equal(process_image(image, MllamaImageConfig()).pixel_values, expected)


def test_rgba_is_composited_onto_white():
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    white = process_image(Image.new("RGB", (4, 4), (255, 255, 255)), MllamaImageConfig(tile_size=8))
    assert torch.equal(process_image(transparent, MllamaImageConfig(tile_size=8)).pixel_values, white.pixel_values)


@pytest.mark.parametrize("max_image_tiles", [1, 2, 4, 6])
def test_random_sizes_match_hf_at_small_tile_size(max_image_tiles):
    hf = hf_processor(56, max_image_tiles)
    config = MllamaImageConfig(tile_size=56, max_image_tiles=max_image_tiles)
    rng = np.random.default_rng(SEED + max_image_tiles)
    for height, width in rng.integers(1, 400, (12, 2)):
        assert_matches_hf(random_image(int(height), int(width)), config, hf)


def test_missing_tiles_are_zero_and_padding_is_black_normalized():
    config = MllamaImageConfig(tile_size=56)
    processed = process_image(Image.new("RGB", (56, 20), (255, 255, 255)), config)  # one tile, bottom padded
    assert processed.num_tiles == 1
    assert torch.equal(processed.pixel_values[1:], torch.zeros(3, 3, 56, 56))
    black = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(processed.pixel_values[0, :, -1, 0], black, atol=ATOL, rtol=0)


@pytest.mark.parametrize("max_image_tiles", range(1, 9))
def test_supported_aspect_ratios_match_hf(max_image_tiles):
    expected = hf_image.get_all_supported_aspect_ratios(max_image_tiles)
    assert supported_aspect_ratios(max_image_tiles) == [tuple(ratio) for ratio in expected]


def test_optimal_tiled_canvas_matches_hf_on_a_grid():
    sizes = [1, 2, 27, 28, 55, 56, 57, 111, 112, 113, 168, 200, 224, 225, 400, 1000]
    for max_image_tiles in (1, 2, 4, 6):
        for height in sizes:
            for width in sizes:
                expected = hf_image.get_optimal_tiled_canvas(height, width, max_image_tiles, 56)
                assert optimal_tiled_canvas(height, width, max_image_tiles, 56) == tuple(int(x) for x in expected)


@pytest.mark.parametrize("size, canvas, aspect_ratio_id", [
    ((300, 500), (560, 560), 1), ((1000, 400), (1120, 560), 5), ((100, 2000), (560, 2240), 4),
    ((800, 1200), (1120, 1120), 6), ((2000, 2000), (1120, 1120), 6),
])
def test_spec_worked_examples(size, canvas, aspect_ratio_id):
    assert optimal_tiled_canvas(*size, 4, 560) == canvas
    assert 1 + supported_aspect_ratios(4).index((canvas[0] // 560, canvas[1] // 560)) == aspect_ratio_id


def test_stack_images_matches_hf_layout_for_two_images(hf_real):
    images = [random_image(300, 500), random_image(1000, 400)]
    expected = hf_real(images=[images], return_tensors="pt")
    pixel_values, aspect_ratio_ids, aspect_ratio_mask = stack_images([process_image(image, MllamaImageConfig())
                                                                      for image in images])
    assert pixel_values.shape == (2, 4, 3, 560, 560)
    torch.testing.assert_close(pixel_values, expected["pixel_values"][0], atol=ATOL, rtol=0)
    assert aspect_ratio_ids.dtype == torch.int64 and aspect_ratio_mask.dtype == torch.int64
    assert torch.equal(aspect_ratio_ids, expected["aspect_ratio_ids"][0])
    assert torch.equal(aspect_ratio_mask, expected["aspect_ratio_mask"][0])


def test_stack_images_rejects_an_empty_list():
    with pytest.raises(ValueError, match="at least one image"):
        stack_images([])


IMG = 9
TOKEN_SEQUENCES = [
    [1, 2, 3],
    [IMG, 1, 2, 3],
    [1, 2, IMG],
    [1, IMG, 2, 3, IMG, 4, 5],
    [1, IMG, IMG, 2, 3],
    [IMG, IMG, IMG],
    [1, IMG, IMG, 2, IMG, 3, IMG, IMG, 4, 5],
    [IMG, 1, IMG, IMG, 2, 3, IMG],
    [IMG, IMG, 1, IMG],
]


@pytest.mark.parametrize("token_ids", TOKEN_SEQUENCES, ids=str)
def test_cross_attention_token_ranges_match_hf(token_ids):
    expected = [(start, len(token_ids) if end == -1 else end)
                for start, end in get_cross_attention_token_mask(token_ids, IMG)]
    assert cross_attention_token_ranges(token_ids, IMG) == expected


def test_adjacent_images_cover_the_text_after_their_run():
    assert cross_attention_token_ranges([1, IMG, IMG, 2, 3, IMG, 4], IMG) == [(1, 5), (2, 5), (5, 7)]


def test_config_from_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": 56, "width": 56}, "max_image_tiles": 2, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25], "rescale_factor": 0.5, "resample": 2, "do_pad": True,
    }))
    config = MllamaImageConfig.from_model_dir(tmp_path, {"image_size": 999, "max_num_tiles": 9})
    assert config == MllamaImageConfig(56, 2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0.5)


def test_config_from_vision_config_without_preprocessor_config(tmp_path):
    config = MllamaImageConfig.from_model_dir(tmp_path, {"image_size": 28, "max_num_tiles": 2})
    assert config == MllamaImageConfig(tile_size=28, max_image_tiles=2)
    assert (config.image_mean, config.image_std) == (CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize("bad, match", [
    ({"size": {"height": 56, "width": 28}}, "square"),
    ({"resample": 3}, "bilinear"),
    ({"do_pad": False}, "do_pad"),
])
def test_config_rejects_unsupported_preprocessor_settings(tmp_path, bad, match):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        MllamaImageConfig.from_model_dir(tmp_path)


@pytest.mark.parametrize("size", [(300, 500), (1120, 1120), (30, 3000), (1500, 1499)])
def test_one_tile_matches_the_reference_with_one_tile_at_most(size):
    image = random_image(*size)
    expected = hf_processor(560, 1)(images=[[image]], return_tensors="pt")
    processed = process_image(image, MllamaImageConfig(), one_tile=True)
    assert processed.num_tiles == 1 and processed.aspect_ratio_id == 1
    assert processed.aspect_ratio_mask.tolist() == [1, 0, 0, 0]
    torch.testing.assert_close(processed.pixel_values[:1], expected["pixel_values"][0, 0], atol=ATOL, rtol=0)
    assert not processed.pixel_values[1:].any()
