"""Our Llama 4 against transformers' Llama4ForConditionalGeneration on tiny random checkpoints (fp32), driven
through the paged KV cache as the engine drives it."""

import dataclasses

import pytest
import torch

from tests.helpers import REL_TOL, relative_error
from tests.models.llama4_checkpoints import (
    CHUNK_SIZE,
    PATCH,
    PROMPT_IMAGES,
    TINY_LLAMA4,
)
from tests.models.llama4_harness import PagedHarness, PagedSequence
from vlmserve.models.llama4 import Llama4ForConditionalGeneration
from vlmserve.models.loader import load_model

pytestmark = pytest.mark.parity
CASES = list(PROMPT_IMAGES)


def hf_inputs(ids: list[int], pixels: torch.Tensor | None) -> dict:
    return {"input_ids": torch.tensor([ids]), **({} if pixels is None else {"pixel_values": pixels})}


def image_embeds(model, pixels: torch.Tensor | None) -> torch.Tensor | None:
    with torch.inference_mode():
        return None if pixels is None else model.encode_images(pixels)


def prompt_logits(model, ids: list[int], pixels: torch.Tensor | None) -> torch.Tensor:
    return PagedHarness(model).prefill(ids, image_embeds(model, pixels))[1]


@pytest.fixture(scope="module", params=list(TINY_LLAMA4))
def checkpoint(request, tiny_llama4):
    return tiny_llama4[request.param]


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint.path, dtype="float32", device="cpu").model


@pytest.fixture(scope="module")
def hf_logits(checkpoint):
    """case -> transformers' prompt logits [T, vocab]."""
    with torch.no_grad():
        return {case: checkpoint.hf_model(**hf_inputs(*checkpoint.inputs(case))).logits[0] for case in CASES}


def test_vision_tower_and_projector_match_transformers(checkpoint, model):
    _, pixels = checkpoint.inputs("two-images")
    hf = checkpoint.hf_model
    with torch.no_grad():
        features = hf.get_image_features(pixel_values=pixels).last_hidden_state
        ref = hf.multi_modal_projector(features.flatten(0, 1))
    assert relative_error(image_embeds(model, pixels), ref) < REL_TOL


@pytest.mark.parametrize("case", CASES)
def test_prompt_logits_match_transformers(checkpoint, model, hf_logits, case):
    ids, pixels = checkpoint.inputs(case)
    tiles = 0 if pixels is None else len(pixels)
    assert len(ids) >= 20 and ids.count(PATCH) == tiles * model.config.vision.tokens_per_tile
    assert relative_error(prompt_logits(model, ids, pixels), hf_logits[case]) < REL_TOL


@pytest.mark.parametrize("case", CASES)
def test_greedy_continuation_matches_transformers_generate(checkpoint, model, case):
    ids, pixels = checkpoint.inputs(case)
    with torch.no_grad():
        ref = checkpoint.hf_model.generate(**hf_inputs(ids, pixels), max_new_tokens=32, do_sample=False,
                                           eos_token_id=None, pad_token_id=0)
    expected = ref[0, len(ids):].tolist()
    ours = PagedHarness(model).greedy(ids, image_embeds(model, pixels), max_new_tokens=32)
    assert len(set(ours)) > 4  # a continuation that is not one token repeated
    assert ours == expected


def test_prefill_in_two_chunks_equals_one_shot(checkpoint, model, hf_logits):
    """The second chunk starts inside the first image's patch tokens and continues from the cached positions."""
    ids, pixels = checkpoint.inputs("two-images")
    embeds = image_embeds(model, pixels)
    split = ids.index(PATCH) + 2
    harness = PagedHarness(model)
    seq = PagedSequence(ids)
    first = harness.step([seq], [split], embeds[:2])
    second = harness.step([seq], [len(ids) - split], embeds[2:])
    assert relative_error(torch.cat([first, second]), hf_logits["two-images"]) < REL_TOL


def test_sequences_batched_in_one_step_match_separate_runs(checkpoint, model):
    """A flat batch of two prefills (one with images), then of their two decode steps, equals each sequence run on
    its own."""
    (ids_a, pixels_a), (ids_b, _) = checkpoint.inputs("two-images"), checkpoint.inputs("no-image", seed=5)
    embeds = image_embeds(model, pixels_a)

    def run(batched: bool) -> torch.Tensor:
        harness = PagedHarness(model)
        a, b = PagedSequence(list(ids_a)), PagedSequence(list(ids_b))
        if batched:
            logits = [harness.step([a, b], [len(ids_a), len(ids_b)], embeds)]
        else:
            logits = [harness.step([a], [len(ids_a)], embeds), harness.step([b], [len(ids_b)])]
        a.token_ids.append(7)
        b.token_ids.append(9)
        logits += [harness.step([a, b], [1, 1])] if batched else [harness.step([a], [1]), harness.step([b], [1])]
        return torch.cat(logits)

    assert relative_error(run(batched=True), run(batched=False)) < REL_TOL


@pytest.mark.parametrize("change", [{"attn_temperature_tuning": False}, {"attention_chunk_size": None}])
def test_chunking_and_temperature_tuning_change_the_logits(checkpoint, model, hf_logits, change):
    """Parity is not vacuous: without either feature the same weights miss transformers by far."""
    config = dataclasses.replace(model.config, text=dataclasses.replace(model.config.text, **change))
    variant = Llama4ForConditionalGeneration(config).eval()
    variant.load_state_dict(model.state_dict())
    ids, pixels = checkpoint.inputs("two-images")
    assert len(ids) > 4 * CHUNK_SIZE
    assert relative_error(prompt_logits(variant, ids, pixels), hf_logits["two-images"]) > 1000 * REL_TOL


def test_image_embeds_must_match_the_image_tokens(checkpoint, model):
    ids, pixels = checkpoint.inputs("one-image")
    with pytest.raises(ValueError, match=rf"image embeddings for {ids.count(PATCH)} image token rows"):
        PagedHarness(model).prefill(ids, image_embeds(model, pixels)[1:])
