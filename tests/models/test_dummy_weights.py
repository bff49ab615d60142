"""Dummy weights keep activations in scale, so a comparison run on them sees bugs in attention over the context:
an injected off-by-one in the decode context lengths changes the greedy tokens."""

import pytest
import torch

from tests.models.test_mllama_parity import random_ids
from vlmserve import LLM, SamplingParams
from vlmserve.layers.attention_metadata import AttentionMetadata
from vlmserve.models.loader import load_model


@pytest.fixture(scope="module")
def dummy_llm(tiny_checkpoints):
    return LLM(tiny_checkpoints["gqa2-2tiles"].path, load_format="dummy", dtype="float32", device="cpu",
               num_kv_blocks=128, enable_prefix_caching=False)


def test_matrices_are_fan_in_scaled_and_norms_are_ones(tiny_checkpoints):
    model = load_model(tiny_checkpoints["gqa2-2tiles"].path, load_format="dummy", dtype="float32").model
    layer = model.language_model.model.layers[0]
    for weight in (layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight):
        assert weight.std().item() == pytest.approx(weight.shape[1] ** -0.5, rel=0.2)
    assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
    embedding = model.language_model.model.embed_tokens.weight
    assert embedding.std().item() == pytest.approx(1.0, rel=0.1)
    gate = model.language_model.model.layers[2].cross_attn_attn_gate
    assert gate.abs().item() > 0  # cross-attention contributes


def greedy(llm: LLM) -> list[list[int]]:
    prompts = [{"prompt_token_ids": [1, *random_ids(12, seed=seed)]} for seed in range(6)]
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    return [output.outputs[0].token_ids for output in outputs]


def test_an_off_by_one_in_decode_context_lengths_changes_the_tokens(dummy_llm, monkeypatch):
    correct = greedy(dummy_llm)
    assert greedy(dummy_llm) == correct  # the comparison itself is deterministic
    build = AttentionMetadata.build.__func__

    def one_short(cls, query_start_loc, seq_lens, *args, **kwargs):
        """Each decoding sequence attends to one key fewer than it holds (its own is left out)."""
        queries = [end - start for start, end in zip(query_start_loc, query_start_loc[1:])]
        lens = [length - (count == 1) for length, count in zip(seq_lens, queries)]
        return build(cls, query_start_loc, lens, *args, **kwargs)

    monkeypatch.setattr(AttentionMetadata, "build", classmethod(one_short))
    broken = greedy(dummy_llm)
    assert sum(b != c for b, c in zip(broken, correct)) >= 5  # nearly every prompt's answer shows it
