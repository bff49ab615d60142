"""A request's images can neither amplify memory nor time without bound: the per-request pixel budget is checked
from the headers before anything is decoded, and images are decoded and processed one at a time."""

import re
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import data_url, png_bytes, png_header_claiming
from vlmserve import LLM
from vlmserve.config import EngineConfig
from vlmserve.engine import image_prompts
from vlmserve.engine.image_prompts import Llama4ImagePrompts, MllamaImagePrompts
from vlmserve.engine.input_processor import InputError, InputProcessor
from vlmserve.multimodal import inputs
from vlmserve.multimodal.inputs import (
    ImageInputError,
    OpenedImage,
    image_content_hash,
    load_image,
)
from vlmserve.multimodal.llama4_processor import (
    LLAMA4_IMAGE_TOKEN_IDS,
    Llama4ImageConfig,
)
from vlmserve.multimodal.llama4_processor import process_image as process_llama4_image
from vlmserve.multimodal.mllama_processor import (
    MllamaImageConfig,
    process_image,
    stack_images,
)
from vlmserve.tokenizer.llama4_standin import build_llama4_standin_tokenizer
from vlmserve.tokenizer.tokenizer import (
    LLAMA4_SPECIAL_TOKENS,
    Tokenizer,
    load_tokenizer,
)

FAMILIES = ["mllama", "llama4"]
MLLAMA_CONFIG = MllamaImageConfig(tile_size=56)
LLAMA4_CONFIG = Llama4ImageConfig(tile_size=28, patch_size=7, max_patches=4)


@pytest.fixture(scope="module")
def tokenizers():
    return {"mllama": load_tokenizer(),
            "llama4": Tokenizer(build_llama4_standin_tokenizer(), special=LLAMA4_SPECIAL_TOKENS)}


def make_processor(tokenizers, family: str, max_request_pixels: int = 100_000_000) -> InputProcessor:
    prompts = (MllamaImagePrompts(MLLAMA_CONFIG, 128256) if family == "mllama"
               else Llama4ImagePrompts(LLAMA4_CONFIG, LLAMA4_IMAGE_TOKEN_IDS))
    return InputProcessor(tokenizers[family], prompts, num_embeddings=202048, max_image_pixels=50_000_000,
                          max_request_pixels=max_request_pixels)


def chat(*sources) -> list[dict]:
    parts = [{"type": "image", "image": source} for source in sources]
    return [{"role": "user", "content": parts + [{"type": "text", "text": "What is this?"}]}]


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


@pytest.fixture
def decodes(monkeypatch) -> list[Image.Image]:
    """Weak references to every image decoded; at each decode, all images decoded before it (and their RGB
    conversions) must already be gone."""
    decode, to_rgb, seen = OpenedImage.decode, image_prompts.to_rgb, []

    def checked_decode(self):
        alive = [reference for reference in seen if reference() is not None]
        assert not alive, f"{len(alive)} decoded image(s) still alive when the next one is decoded"
        image = decode(self)
        seen.append(weakref.ref(image))
        return image

    def tracked_to_rgb(image):
        rgb = to_rgb(image)
        seen.append(weakref.ref(rgb))
        return rgb
    monkeypatch.setattr(OpenedImage, "decode", checked_decode)
    monkeypatch.setattr(image_prompts, "to_rgb", tracked_to_rgb)
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_budget_is_checked_from_the_headers_before_any_image_is_decoded(family, tokenizers, decodes):
    processor = make_processor(tokenizers, family)
    sources = [data_url(png_header_claiming(7000, 7000)) for _ in range(8)]  # each under the 50M per-image limit
    message = ("the request's images have 392000000 pixels in all; at most 100000000 are allowed per request "
               "(max_request_pixels)")
    with pytest.raises(InputError, match=re.escape(message)):
        processor.process_chat(chat(*sources))
    assert decodes == []


@pytest.mark.parametrize("family", FAMILIES)
def test_budget_sums_every_image_and_admits_its_limit(family, tokenizers):
    sources = [png_bytes(noise(40, 30)), png_bytes(noise(20, 10, seed=1))]  # 1200 + 200 pixels
    assert make_processor(tokenizers, family, max_request_pixels=1400).process_chat(chat(*sources)).num_images == 2
    with pytest.raises(InputError, match="1400 pixels in all; at most 1399 are allowed per request"):
        make_processor(tokenizers, family, max_request_pixels=1399).process_chat(chat(*sources))
    with pytest.raises(InputError, match="1400 pixels in all"):
        make_processor(tokenizers, family, max_request_pixels=1399).process_prompt(
            {"prompt": "<|image|><|image|>Hi", "images": sources})


@pytest.mark.parametrize("family", FAMILIES)
def test_one_decoded_image_is_alive_at_a_time(family, tokenizers, decodes):
    modes = ["RGB", "RGBA", "P", "L", "RGB"]
    sources = [png_bytes(noise(90, 60 + i, mode, seed=i)) for i, mode in enumerate(modes)]
    prepared = make_processor(tokenizers, family).process_chat(chat(*sources))
    assert prepared.num_images == len(modes)
    assert len(decodes) == 2 * len(modes)  # each decoded image and its RGB form (the image itself when RGB)
    assert all(reference() is None for reference in decodes)


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_and_hashes_equal_each_image_processed_alone(family, tokenizers):
    sources = [png_bytes(noise(90, 60, "RGBA")), png_bytes(noise(50, 130, "P", seed=1)),
               png_bytes(noise(70, 70, seed=2))]
    multimodal = make_processor(tokenizers, family).process_chat(chat(*sources)).multimodal
    images = [load_image(source) for source in sources]
    assert multimodal.content_hashes == [image_content_hash(image) for image in images]
    if family == "mllama":
        expected = stack_images([process_image(image, MLLAMA_CONFIG) for image in images])[0]
    else:
        expected = torch.cat([process_llama4_image(image, LLAMA4_CONFIG).pixel_values for image in images])
    assert torch.equal(multimodal.pixel_values, expected)


def test_a_corrupt_image_stays_an_image_input_error(tokenizers):
    truncated = png_bytes(noise(200, 200))[:2000]
    with pytest.raises(ImageInputError, match="truncated"):
        make_processor(tokenizers, "mllama").process_chat(chat(png_bytes(noise(10, 10)), truncated))


@pytest.mark.parametrize("max_request_pixels", [1399, 1400])
def test_image_files_are_closed_whether_the_request_is_refused_or_not(max_request_pixels, tokenizers, tmp_path,
                                                                      monkeypatch):
    files = []

    def tracking_open(*args, **kwargs):
        files.append(open(*args, **kwargs))  # noqa: SIM115 (the test checks that the code closes them)
        return files[-1]
    monkeypatch.setattr(inputs, "open", tracking_open, raising=False)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    paths[0].write_bytes(png_bytes(noise(40, 30)))
    paths[1].write_bytes(png_bytes(noise(20, 10)))
    processor = make_processor(tokenizers, "mllama", max_request_pixels=max_request_pixels)
    try:
        processor.process_chat(chat(*paths))
    except InputError:
        assert max_request_pixels == 1399
    assert len(files) == 2 and all(file.closed for file in files)


def test_engine_config_defaults_and_validates_the_budget():
    assert EngineConfig(model="m").max_request_pixels == 100_000_000
    with pytest.raises(ValueError, match="max_request_pixels must be >= 1, got 0"):
        EngineConfig(model="m", max_request_pixels=0)


def test_llm_passes_the_budget_to_its_input_processor(demo_model_dir):
    llm = LLM(demo_model_dir, dtype="float32", device="cpu", num_kv_blocks=16, max_request_pixels=1399)
    with pytest.raises(InputError, match="1400 pixels in all; at most 1399 are allowed per request"):
        llm.chat(chat(png_bytes(noise(40, 30)), png_bytes(noise(20, 10))), use_tqdm=False)
