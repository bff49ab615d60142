"""Llama 4 through the engine (chat format, image processor, early-fusion image features, chunked prefill, prefix
caching) against transformers' generate on the same token ids and pixels."""

import pytest
from PIL import Image

from tests.helpers import random_image
from tests.llama4_served import PATCH_TOKEN
from vlmserve import LLM, SamplingParams
from vlmserve.bench.model_source import resolve_model
from vlmserve.engine.sequence import Sequence

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def chat(text: str, *images: Image.Image) -> list[dict]:
    parts = [{"type": "image_pil", "image_pil": image} for image in images]
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": parts + [{"type": "text", "text": text}]}]


CONVERSATIONS = [
    chat("Describe the picture in detail.", random_image(40, 90, 0)),  # 2 x 3 tiles + global
    chat("Which one is brighter?", random_image(30, 30, 1), random_image(70, 50, 2)),
    chat("Say hello in three languages."),
    chat("And what about this one?", random_image(40, 90, 0)),  # the first image again
]


@pytest.fixture(scope="module")
def llm(served_llama4):
    # 4-token blocks and a 24-token step budget: prompts (and images) are prefilled across several steps.
    return LLM(served_llama4.path, dtype="float32", device="cpu", block_size=4, num_kv_blocks=256,
               max_num_batched_tokens=24)


def test_chat_prompt_expands_each_image_into_its_tile_layout(llm):
    prepared = llm.engine.input_processor.process_chat(CONVERSATIONS[0])
    tokenizer = llm.get_tokenizer()
    assert prepared.prompt_token_ids[0] == tokenizer.bos_token_id
    # 40 x 90 on 28-pixel tiles, at most 6: a 2 x 3 canvas. <|image_start|>, 6 x 4 patches, 2 x 2 column
    # separators, 2 row separators, <|image|>, 4 global patches, <|image_end|>
    assert prepared.prompt_token_ids.count(PATCH_TOKEN) == 28
    (start, end), = prepared.multimodal.token_ranges
    assert end - start == 1 + 24 + 4 + 2 + 1 + 4 + 1
    assert prepared.multimodal.pixel_values.shape == (7, 3, 28, 28)


@pytest.mark.parity
def test_batched_chunked_greedy_equals_transformers(llm, served_llama4):
    outputs = llm.chat(CONVERSATIONS, GREEDY, use_tqdm=False)
    for conversation, output in zip(CONVERSATIONS, outputs):
        prepared = llm.engine.input_processor.process_chat(conversation)
        mm = prepared.multimodal
        expected = served_llama4.hf_greedy(prepared.prompt_token_ids, mm.pixel_values if mm else None, 12)
        assert output.prompt_token_ids == prepared.prompt_token_ids
        assert output.outputs[0].token_ids == expected
    assert len({tuple(o.outputs[0].token_ids) for o in outputs}) > 1


def test_prefix_cache_hit_on_a_shared_image_prompt_gives_the_same_tokens(llm):
    conversation = chat("Count the colours.", random_image(60, 60, 5))
    first = llm.chat(conversation, GREEDY, use_tqdm=False)[0]
    before = llm.engine.stats()
    second = llm.chat(conversation, GREEDY, use_tqdm=False)[0]
    after = llm.engine.stats()
    assert after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens >= len(first.prompt_token_ids) - 4
    assert after.num_images_encoded == before.num_images_encoded  # every image token came from the cache
    assert second.outputs[0].token_ids == first.outputs[0].token_ids


def test_images_are_encoded_once_per_request_and_their_features_released(llm):
    before = llm.engine.stats().num_images_encoded
    llm.chat(chat("Two views.", random_image(33, 80, 8), random_image(50, 20, 9)), GREEDY, use_tqdm=False)
    assert llm.engine.stats().num_images_encoded - before == 2
    assert llm.engine.runner.vision.features == {}


def test_prompt_with_patch_tokens_of_its_own_is_refused(llm):
    with pytest.raises(ValueError, match="<\\|patch\\|>"):
        llm.generate({"prompt": "<|image|><|patch|> hi", "images": [random_image(20, 20, 3)]}, GREEDY,
                     use_tqdm=False)


def test_a_generated_image_token_is_not_given_image_features(llm):
    """The model may sample <|patch|> itself: only the prompt's image tokens take features, so a step that decodes
    one beside a prefilling image request gives rows for the latter alone."""
    processor, vision = llm.engine.input_processor, llm.engine.runner.vision
    decoding = Sequence(Sequence.next_id(), "a", processor.process_chat(CONVERSATIONS[2]).prompt_token_ids,
                        SamplingParams(), output_token_ids=[PATCH_TOKEN])
    prepared = processor.process_chat(CONVERSATIONS[1])
    prefilling = Sequence(Sequence.next_id(), "b", prepared.prompt_token_ids, SamplingParams(),
                          multimodal=prepared.multimodal)
    num_prompt = len(prepared.prompt_token_ids)
    inputs = vision.step_inputs([decoding, prefilling], [[decoding.num_tokens - 1], list(range(num_prompt))],
                                [0, 1])
    patch_rows = [1 + p for p, t in enumerate(prepared.prompt_token_ids) if t == PATCH_TOKEN]
    assert inputs.image_token_rows.tolist() == patch_rows
    assert inputs.image_embeds.shape[0] == len(patch_rows)
    assert vision.features == {}


SMALL_SCOUT = {
    "text_config": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "head_dim": 16, "intermediate_size": 64, "intermediate_size_mlp": 128, "num_local_experts": 4,
                    "no_rope_layers": [1, 1, 1, 0], "moe_layers": [0, 1, 2, 3]},
    "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128,
                      "image_size": 28, "patch_size": 7, "projector_input_dim": 32, "projector_output_dim": 32,
                      "vision_output_dim": 32},
}


def test_shipped_scout_config_serves_an_image_chat_with_dummy_weights():
    """The real Scout config.json (vocabulary, special ids, routing, chunking), shrunk in width and depth: dummy
    weights load, the stand-in tokenizer replaces the missing tokenizer.json, and an image chat generates."""
    source = resolve_model("llama-4-scout-17b-16e", load_format="dummy", hf_overrides=SMALL_SCOUT)
    llm = LLM(source.path, load_format="dummy", dtype="float32", device="cpu", num_kv_blocks=64)
    assert llm.get_tokenizer().family == "llama4" and llm.engine.model_config.text.vocab_size == 202048
    output = llm.chat(chat("What is this?", random_image(40, 60, 4)), GREEDY, use_tqdm=False)[0]
    assert len(output.outputs[0].token_ids) == GREEDY.max_tokens
    assert output.prompt_token_ids.count(PATCH_TOKEN) > 0


@pytest.mark.parity
def test_detail_low_is_one_tile_with_fewer_image_tokens_and_equals_transformers(llm, served_llama4):
    image = random_image(40, 90, 0)
    low = [{"role": "user", "content": [{"type": "image_pil", "image_pil": image, "detail": "low"},
                                        {"type": "text", "text": "Describe it."}]}]
    full = [{"role": "user", "content": [{"type": "image_pil", "image_pil": image},
                                         {"type": "text", "text": "Describe it."}]}]
    full_output, low_output = llm.chat([full, low], GREEDY, use_tqdm=False)
    prepared = llm.engine.input_processor.process_chat(low)
    assert prepared.multimodal.num_tiles == [1] and prepared.prompt_token_ids.count(PATCH_TOKEN) == 4
    # the image's span: <|image_start|>, <|image|>, its 4 patches, <|image_end|>, against the full one's 37
    (start, end), = prepared.multimodal.token_ranges
    assert end - start == 7 and len(low_output.prompt_token_ids) == len(full_output.prompt_token_ids) - 37 + 7
    expected = served_llama4.hf_greedy(prepared.prompt_token_ids, prepared.multimodal.pixel_values, 12)
    assert low_output.outputs[0].token_ids == expected
