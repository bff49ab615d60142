"""The engine on a tiny random checkpoint: continuous batching, chunked prefill, prefix caching, preemption,
abort; checked against each request run alone and against transformers' greedy `generate`."""

import pytest
import torch

from tests.conftest import IMAGE_TOKEN
from tests.models.test_mllama_parity import hf_inputs, random_ids, random_image
from vlmserve import LLM, SamplingParams
from vlmserve.engine.sampler import Sampler

CHECKPOINT = "gqa2-2tiles"
MAX_TOKENS = 10


def make_prompt(i: int) -> dict:
    """Mixed lengths; every third prompt has one image, every fifth two."""
    text = random_ids(5 + 7 * i % 40, seed=100 + i)
    if i % 5 == 4:
        return {"prompt_token_ids": [IMAGE_TOKEN, 1] + text[:3] + [IMAGE_TOKEN] + text[3:],
                "images": [random_image(30 + i, 50, seed=i), random_image(60, 20 + i, seed=50 + i)]}
    if i % 3 == 0:
        return {"prompt_token_ids": [1] + text[:2] + [IMAGE_TOKEN] + text[2:],
                "images": [random_image(40, 30 + 2 * i, seed=i)]}
    return {"prompt_token_ids": [1] + text}


def make_params(i: int) -> SamplingParams:
    """Greedy for even i; seeded sampling with assorted controls for odd i."""
    if i % 2 == 0:
        return SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return SamplingParams(temperature=0.8, top_p=0.9, top_k=50, min_p=0.01, presence_penalty=0.5,
                          repetition_penalty=1.2, seed=i, max_tokens=MAX_TOKENS - i % 4, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints[CHECKPOINT]


@pytest.fixture(scope="module")
def llm(checkpoint):
    """Small blocks and a small token budget, so long prompts are chunked while others decode."""
    return LLM(checkpoint.path, dtype="float32", device="cpu", transformers_compat=True, num_kv_blocks=256,
               block_size=4, max_num_batched_tokens=24)


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def sequences(engine, request_id: str) -> list:
    """The scheduler's sequences of a request, by completion index."""
    seqs = [s for s in [*engine.scheduler.running, *engine.scheduler.waiting] if s.request_id == request_id]
    return sorted(seqs, key=lambda s: s.index)


@pytest.mark.parity
def test_mixed_batch_equals_each_request_alone_and_transformers(llm, checkpoint):
    prompts, params = [make_prompt(i) for i in range(16)], [make_params(i) for i in range(16)]
    together = token_ids(llm.generate(prompts, params, use_tqdm=False))
    alone = [token_ids(llm.generate(p, q, use_tqdm=False))[0] for p, q in zip(prompts, params)]
    assert together == alone
    for i in range(0, 16, 2):
        prepared = llm.engine.input_processor.process_prompt(prompts[i])
        with torch.no_grad():
            ref = checkpoint.hf_model.generate(**hf_inputs(prepared), max_new_tokens=MAX_TOKENS, do_sample=False,
                                               eos_token_id=None, pad_token_id=0)
        assert together[i] == ref[0, len(prepared.prompt_token_ids):].tolist(), f"prompt {i}"


def test_prefix_cache_hit_gives_identical_tokens(llm, checkpoint):
    prompt, params = make_prompt(9), make_params(0)
    before = llm.engine.stats().prefix_cache_hit_tokens
    first = token_ids(llm.generate(prompt, params, use_tqdm=False))
    hit = llm.engine.stats().prefix_cache_hit_tokens - before
    second = token_ids(llm.generate(prompt, params, use_tqdm=False))
    assert llm.engine.stats().prefix_cache_hit_tokens - before - hit >= len(prompt["prompt_token_ids"]) - 4
    uncached = LLM(checkpoint.path, dtype="float32", device="cpu", transformers_compat=True, num_kv_blocks=256,
                   block_size=4, enable_prefix_caching=False)
    assert first == second == token_ids(uncached.generate(prompt, params, use_tqdm=False))
    assert uncached.engine.stats().prefix_cache_hit_tokens == 0


def test_tiny_kv_pool_preempts_and_every_request_finishes_identically(llm, checkpoint):
    prompts, params = [make_prompt(i) for i in range(20)], [make_params(i) for i in range(20)]
    expected = token_ids(llm.generate(prompts, params, use_tqdm=False))
    tight = LLM(checkpoint.path, dtype="float32", device="cpu", transformers_compat=True, num_kv_blocks=24,
                block_size=4)
    assert token_ids(tight.generate(prompts, params, use_tqdm=False)) == expected
    assert tight.engine.stats().num_preemptions > 0
    assert tight.engine.scheduler.block_manager.num_free_blocks == 24


def test_n_completions_share_their_prompt_blocks(llm):
    engine = llm.engine
    prepared = engine.input_processor.process_prompt(make_prompt(6))
    engine.add_request("shared", prepared, SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=4))
    engine.step()
    tables = [seq.block_table for seq in sequences(engine, "shared")]
    full_blocks = (len(prepared.prompt_token_ids) - 1) // 4
    assert full_blocks > 0 and tables[0][:full_blocks] == tables[1][:full_blocks] == tables[2][:full_blocks]
    while engine.has_unfinished_requests():
        engine.step()


def test_abort_mid_generation_returns_every_block(llm):
    engine = llm.engine
    free_before = engine.scheduler.block_manager.num_free_blocks
    engine.add_request("doomed", engine.input_processor.process_prompt(make_prompt(3)),
                       SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert engine.scheduler.block_manager.num_free_blocks < free_before
    engine.abort_request("doomed")
    assert engine.scheduler.block_manager.num_free_blocks == free_before
    assert not engine.has_unfinished_requests() and engine.step() == []


def test_same_image_is_encoded_once_and_counted_in_the_kv_budget(llm):
    engine = llm.engine
    prompt = {**make_prompt(3), "images": [random_image(45, 45, seed=999)]}  # an image no other test sends
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    free_before, encoded_before = engine.scheduler.block_manager.num_free_blocks, engine.stats().num_images_encoded
    engine.add_request("first", engine.input_processor.process_prompt(prompt), params)
    engine.step()
    blocks_per_image = engine.scheduler.block_manager.blocks_per_image
    token_blocks = len(sequences(engine, "first")[0].block_table)
    assert blocks_per_image > 0
    assert engine.scheduler.block_manager.num_free_blocks == free_before - token_blocks - blocks_per_image
    while engine.has_unfinished_requests():
        engine.step()
    first = engine.stats()
    second = token_ids(llm.generate([prompt, prompt], params, use_tqdm=False))
    stats = engine.stats()
    assert first.num_images_encoded == encoded_before + 1 and stats.num_images_encoded == first.num_images_encoded
    assert stats.encoder_cache_hit_images - first.encoder_cache_hit_images == 2
    assert second[0] == second[1]


def test_request_larger_than_the_kv_cache_is_refused_by_name(checkpoint):
    small = LLM(checkpoint.path, dtype="float32", device="cpu", num_kv_blocks=12, block_size=4)
    prepared = small.engine.input_processor.process_prompt(make_prompt(4))  # two images
    with pytest.raises(ValueError, match="KV cache"):
        small.engine.add_request("big", prepared, SamplingParams(max_tokens=8))
    assert not small.engine.has_unfinished_requests()


def test_a_request_whose_sampling_raises_fails_alone_and_seeded_neighbours_keep_their_tokens(llm, monkeypatch):
    """The batch's sampling raises (a poisoned row) after drawing its noise; every other row, seeded ones included,
    is sampled as if the poisoned request had never been there."""
    prompts, params = [make_prompt(i) for i in range(6)], [make_params(i) for i in range(6)]
    clean = token_ids(llm.generate(prompts, params, use_tqdm=False))
    poison = 1.2345
    sample = Sampler.sample

    def failing(logits, metadata):
        sampled = sample(logits, metadata)
        if (metadata.temperature == poison).any():
            raise RuntimeError("injected sampling fault")
        return sampled

    monkeypatch.setattr(Sampler, "sample", staticmethod(failing))
    poisoned = SamplingParams(temperature=poison, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate(prompts + [make_prompt(7)], params + [poisoned], use_tqdm=False)
    assert token_ids(outputs[:6]) == clean
    failed = outputs[6]
    assert failed.outputs[0].finish_reason == "error" and "injected sampling fault" in failed.error
    assert llm.engine.stats().num_running == 0 and llm.engine.stats().kv_cache_usage == 0
