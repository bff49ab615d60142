"""Our Mllama against transformers' MllamaForConditionalGeneration on tiny random checkpoints (fp32)."""

import pytest
import torch

from tests.conftest import IMAGE_TOKEN, TINY_CONFIGS
from tests.helpers import REL_TOL, random_image, relative_error
from vlmserve import LLM, SamplingParams

pytestmark = pytest.mark.parity


def random_ids(count: int, seed: int) -> list[int]:
    return torch.randint(3, IMAGE_TOKEN - 10, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


PROMPTS = {
    "no-image": (lambda: [1] + random_ids(11, 0), []),
    "one-image-after-text": (lambda: [1] + random_ids(3, 1) + [IMAGE_TOKEN] + random_ids(8, 2), [(20, 50)]),
    "two-images": (lambda: [IMAGE_TOKEN, 1] + random_ids(5, 3) + [IMAGE_TOKEN] + random_ids(6, 4),
                   [(40, 17), (25, 61)]),
    "adjacent-images": (lambda: [1, IMAGE_TOKEN, IMAGE_TOKEN] + random_ids(7, 5), [(33, 33), (70, 20)]),
}
IMAGE_FIRST = {"opens-with-image": (lambda: [IMAGE_TOKEN, 1] + random_ids(10, 6), [(50, 30)]),
               "two-images": PROMPTS["two-images"]}


def hf_inputs(prepared) -> dict:
    """The same token ids and preprocessed images as transformers' keyword arguments."""
    ids = torch.tensor([prepared.prompt_token_ids])
    mm = prepared.multimodal
    if mm is None:
        return {"input_ids": ids}
    num_images, max_tiles = mm.aspect_ratio_mask.shape
    cross_mask = torch.zeros(1, ids.shape[1], num_images, max_tiles, dtype=torch.long)
    for k, ((start, end), tiles) in enumerate(zip(mm.token_ranges, mm.num_tiles)):
        cross_mask[0, start:end, k, :tiles] = 1
    return {"input_ids": ids, "pixel_values": mm.pixel_values[None], "aspect_ratio_ids": mm.aspect_ratio_ids[None],
            "aspect_ratio_mask": mm.aspect_ratio_mask[None], "cross_attention_mask": cross_mask}


def prepare(llm: LLM, prompt_spec):
    make_ids, sizes = prompt_spec
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    return llm.engine.input_processor.process_prompt({"prompt_token_ids": make_ids(), "images": images})


@pytest.fixture(scope="module", params=list(TINY_CONFIGS))
def checkpoint(request, tiny_checkpoints):
    return tiny_checkpoints[request.param]


@pytest.fixture(scope="module")
def compat_llm(checkpoint):
    return LLM(checkpoint.path, dtype="float32", device="cpu", transformers_compat=True, num_kv_blocks=64)


@pytest.fixture(scope="module")
def meta_llm(checkpoint):
    return LLM(checkpoint.path, dtype="float32", device="cpu", num_kv_blocks=64)


@pytest.mark.parametrize("case", list(PROMPTS))
def test_logits_match_transformers_in_compat_mode(checkpoint, compat_llm, case):
    prepared = prepare(compat_llm, PROMPTS[case])
    with torch.no_grad():
        ref = checkpoint.hf_model(**hf_inputs(prepared)).logits[0]
    assert relative_error(compat_llm.engine.prompt_logits(prepared), ref) < REL_TOL


@pytest.mark.parametrize("case", list(IMAGE_FIRST))
def test_meta_mode_matches_reference_with_shifted_intermediate_layers(checkpoint, meta_llm, case):
    prepared = prepare(meta_llm, IMAGE_FIRST[case])
    shifted = checkpoint.shifted_reference()
    with torch.no_grad():
        ref = shifted(**hf_inputs(prepared)).logits[0]
        unshifted = checkpoint.hf_model(**hf_inputs(prepared)).logits[0]
    ours = meta_llm.engine.prompt_logits(prepared)
    error = relative_error(ours, ref)
    assert error < REL_TOL
    assert relative_error(ours, unshifted) > 10 * error  # the two conventions really differ here


def test_meta_mode_zeroes_rows_before_the_first_image(checkpoint, meta_llm, compat_llm):
    """Text before the first image gets no cross-attention at all: its logits equal a text-only run."""
    prepared = prepare(meta_llm, PROMPTS["one-image-after-text"])
    first_image = prepared.prompt_token_ids.index(IMAGE_TOKEN)
    prefix = torch.tensor([prepared.prompt_token_ids[:first_image]])
    with torch.no_grad():
        text_only = checkpoint.hf_model(input_ids=prefix).logits[0]
    meta_rows = meta_llm.engine.prompt_logits(prepared)[:first_image]
    compat_rows = compat_llm.engine.prompt_logits(prepared)[:first_image]
    error = relative_error(meta_rows, text_only)
    assert error < REL_TOL
    assert relative_error(compat_rows, text_only) > 10 * error


@pytest.mark.parametrize("case", ["no-image", "one-image-after-text", "two-images"])
def test_greedy_continuation_matches_transformers_generate(checkpoint, compat_llm, case):
    prepared = prepare(compat_llm, PROMPTS[case])
    inputs = hf_inputs(prepared)
    hf = checkpoint.hf_model
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = ref[0, len(prepared.prompt_token_ids):].tolist()
    make_ids, sizes = PROMPTS[case]
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    output = compat_llm.generate({"prompt_token_ids": make_ids(), "images": images}, params, use_tqdm=False)[0]
    assert output.outputs[0].token_ids == expected
