"""The batched sampler against direct computations on small, known logits."""

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from vlmserve.engine.sampler import Sampler, SamplingMetadata, apply_top_k_top_p_min_p
from vlmserve.sampling_params import SamplingParams

# Hand-made distribution, deliberately unsorted: the most likely ids are 1, 3, 2, 0.
PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])
LOGITS = PROBS.log()


def build(params, prompts=None, outputs=None, generators=None, banned=None, vocab_size=None):
    batch = len(params)
    return SamplingMetadata.build(params, prompts or [[]] * batch, outputs or [[]] * batch,
                                  generators or [None] * batch, vocab_size or 4, "cpu", banned)


def kept_ids(filtered_logits):
    return [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in filtered_logits]


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def test_top_k_one_keeps_only_the_argmax_and_equals_greedy():
    logits = torch.randn(6, 40, generator=seeded(0))
    filtered = apply_top_k_top_p_min_p(logits, torch.ones(6, dtype=torch.long), None, None)
    assert kept_ids(filtered) == [{i} for i in logits.argmax(-1).tolist()]
    top_k_one = Sampler()(logits, build([SamplingParams(top_k=1, temperature=3.0)] * 6, vocab_size=40))
    greedy = Sampler()(logits, build([SamplingParams(temperature=0)] * 6, vocab_size=40))
    assert torch.equal(top_k_one.sampled_token_ids, logits.argmax(-1))
    assert torch.equal(greedy.sampled_token_ids, logits.argmax(-1))


def test_top_k_keeps_exactly_k_largest():
    logits = torch.randn(5, 30, generator=seeded(1))
    top_k = torch.tensor([1, 5, 29, 0, -1])
    expected = [set(logits[0].topk(1).indices.tolist()), set(logits[1].topk(5).indices.tolist()),
                set(logits[2].topk(29).indices.tolist()), set(range(30)), set(range(30))]
    assert kept_ids(apply_top_k_top_p_min_p(logits, top_k, None, None)) == expected


def test_top_k_breaks_ties_by_index_and_accepts_k_above_vocab():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0], [1.0, 3.0, 3.0, 3.0]])
    assert kept_ids(apply_top_k_top_p_min_p(logits, torch.tensor([2, 9]), None, None)) == [{1, 2}, {0, 1, 2, 3}]


@pytest.mark.parametrize("top_p, expected", [
    (1e-6, {1}),  # the top token always stays
    (0.49, {1}),
    (0.51, {1, 3}),  # the token that crosses top_p stays: 0.5 + 0.3 >= 0.51
    (0.79, {1, 3}),
    (0.81, {1, 3, 2}),
    (0.96, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_smallest_set_reaching_top_p(top_p, expected):
    filtered = apply_top_k_top_p_min_p(LOGITS[None], None, torch.tensor([top_p]), None)
    assert kept_ids(filtered) == [expected]
    assert torch.equal(filtered[0, list(expected)], LOGITS[list(expected)])  # survivors keep their logits


def test_top_p_judges_the_distribution_left_by_top_k():
    # After top-k 2 the top token holds 0.5 / 0.8 = 0.625 >= 0.6, so it alone suffices; before, it held 0.5.
    logits = LOGITS.expand(2, 4)
    filtered = apply_top_k_top_p_min_p(logits, torch.tensor([2, -1]), torch.tensor([0.6, 0.6]), None)
    assert kept_ids(filtered) == [{1}, {1, 3}]


@pytest.mark.parametrize("min_p, expected", [
    (0.0, {0, 1, 2, 3}),
    (0.09, {0, 1, 2, 3}),  # 0.05 >= 0.045
    (0.2, {1, 2, 3}),  # threshold 0.1
    (0.55, {1, 3}),  # threshold 0.275
    (0.65, {1}),  # threshold 0.325
    (1.0, {1}),
])
def test_min_p_drops_tokens_below_fraction_of_top_probability(min_p, expected):
    assert kept_ids(apply_top_k_top_p_min_p(LOGITS[None], None, None, torch.tensor([min_p]))) == [expected]


def test_repetition_penalty_scales_exactly_the_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.5, 0.0, -0.25, 4.0]]).repeat(2, 1)
    prompts, outputs, penalties = [[0, 1], [4]], [[3, 3], [1, 5, 6]], [1.5, 0.5]
    metadata = build([SamplingParams(repetition_penalty=p) for p in penalties], prompts, outputs, vocab_size=8)
    penalised = Sampler.apply_penalties(logits, metadata)
    expected = logits.clone()
    for row, penalty in enumerate(penalties):
        for token in set(prompts[row] + outputs[row]):
            value = logits[row, token]
            expected[row, token] = value / penalty if value > 0 else value * penalty
        reference = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompts[row] + outputs[row]]),
                                                              logits[row:row + 1].clone())
        torch.testing.assert_close(penalised[row:row + 1], reference)
    torch.testing.assert_close(penalised, expected)
    assert penalised[0, 0] < logits[0, 0] and penalised[0, 1] < logits[0, 1]  # positive and negative both pushed down
    assert torch.equal(penalised[0, 2:3], logits[0, 2:3]) and torch.equal(penalised[0, 4:], logits[0, 4:])


def test_frequency_and_presence_penalties_subtract_exact_amounts():
    logits = torch.linspace(-1.0, 1.0, 8).repeat(2, 1)
    params = [SamplingParams(frequency_penalty=0.5, presence_penalty=1.0), SamplingParams(presence_penalty=-1.5)]
    metadata = build(params, prompts=[[7], [7]], outputs=[[2, 2, 2, 5], [4]], vocab_size=8)
    penalised = Sampler.apply_penalties(logits, metadata)
    expected = logits.clone()
    expected[0, 2] -= 3 * 0.5 + 1.0
    expected[0, 5] -= 1 * 0.5 + 1.0
    expected[1, 4] += 1.5
    torch.testing.assert_close(penalised, expected)  # prompt token 7 is not penalised (OpenAI semantics)


@pytest.mark.parametrize("use_generators", [False, True], ids=["default-generator", "seeded-rows"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_shapes_the_sampled_distribution(temperature, use_generators):
    num_draws, logits = 20_000, torch.tensor([1.0, 0.0, -0.5, -2.0, 0.5])
    generators = [seeded(i) for i in range(num_draws)] if use_generators else None
    metadata = build([SamplingParams(temperature=temperature)] * num_draws, generators=generators, vocab_size=5)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tokens = Sampler()(logits.expand(num_draws, 5), metadata).sampled_token_ids
    frequencies = torch.bincount(tokens, minlength=5) / num_draws
    expected = (logits / temperature).softmax(-1)
    # 5 standard errors of a binomial frequency: a false failure is a ~1e-6 event.
    tolerance = 5 * (expected * (1 - expected) / num_draws).sqrt()
    assert ((frequencies - expected).abs() <= tolerance).all()
    assert ((frequencies - logits.softmax(-1)).abs() > tolerance).any()  # distinguishable from temperature 1


def _per_step_logits(name: str, step: int, vocab_size: int) -> torch.Tensor:
    return torch.randn(vocab_size, generator=seeded(1000 * step + ord(name)))


def _generate(batch: list[tuple[str, SamplingParams]], num_steps: int, vocab_size: int = 64) -> dict[str, list[int]]:
    """Runs a fixed batch for num_steps, each request seeing logits that depend only on its name and the step."""
    outputs = {name: [] for name, _ in batch}
    generators = [None if p.seed is None else seeded(p.seed) for _, p in batch]
    for step in range(num_steps):
        logits = torch.stack([_per_step_logits(name, step, vocab_size) for name, _ in batch])
        metadata = SamplingMetadata.build([p for _, p in batch], [[1, 2, 3]] * len(batch),
                                          [outputs[name] for name, _ in batch], generators, vocab_size, "cpu")
        for (name, _), token in zip(batch, Sampler()(logits, metadata).sampled_token_ids.tolist()):
            outputs[name].append(token)
    return outputs


def test_seeded_rows_reproduce_across_batch_compositions_and_positions():
    request = SamplingParams(temperature=1.5, top_p=0.95, presence_penalty=0.3, repetition_penalty=1.2, seed=1234)
    alone = _generate([("a", request)], num_steps=8)["a"]
    last_in_mixed_batch = _generate([("x", SamplingParams()), ("y", SamplingParams(seed=9, top_k=5)),
                                     ("a", request)], num_steps=8)["a"]
    first_beside_greedy = _generate([("a", request), ("z", SamplingParams(temperature=0))], num_steps=8)["a"]
    other_seed = _generate([("a", SamplingParams(**{**vars(request), "seed": 4321}))], num_steps=8)["a"]
    assert alone == last_in_mixed_batch == first_beside_greedy
    assert other_seed != alone


def test_banned_ids_are_never_sampled():
    logits = torch.tensor([10.0, 9.0, 1.0, 0.5, 0.0, -1.0]).repeat(400, 1)  # the banned ids dominate
    params = [SamplingParams(temperature=0 if row % 4 == 0 else 2.0) for row in range(400)]
    banned = [[0, 1] if row % 2 == 0 else [] for row in range(400)]
    tokens = Sampler()(logits, build(params, banned=banned, vocab_size=6)).sampled_token_ids
    assert not set(tokens[0::2].tolist()) & {0, 1}
    assert tokens[0] == 2  # a greedy banned row takes the best allowed token
    assert {0, 1} <= set(tokens[1::2].tolist())  # rows without a ban still draw them


def test_logprobs_are_raw_log_softmax_with_sorted_top_ids():
    logits = torch.randn(3, 50, generator=seeded(3))
    params = [SamplingParams(logprobs=None), SamplingParams(logprobs=0, temperature=0.3, repetition_penalty=1.7),
              SamplingParams(logprobs=5, presence_penalty=2.0, top_k=3)]
    metadata = build(params, prompts=[[0, 1]] * 3, outputs=[[4, 5]] * 3, banned=[[], [7], [8]], vocab_size=50)
    out = Sampler()(logits, metadata)
    sampled, top_ids, top_logprobs = out.logprobs
    raw = logits.log_softmax(-1)
    torch.testing.assert_close(sampled, raw.gather(1, out.sampled_token_ids[:, None]).squeeze(1))
    assert top_ids.shape == top_logprobs.shape == (3, 5)
    assert torch.equal(top_ids, raw.topk(5).indices)
    torch.testing.assert_close(top_logprobs, raw.gather(1, top_ids))
    assert (top_logprobs[:, :-1] >= top_logprobs[:, 1:]).all()


def test_logprobs_absent_or_empty_when_not_asked():
    logits = torch.randn(2, 10, generator=seeded(4))
    assert Sampler()(logits, build([SamplingParams()] * 2, vocab_size=10)).logprobs is None
    sampled, top_ids, top_logprobs = Sampler()(logits, build([SamplingParams(logprobs=0)] * 2, vocab_size=10)).logprobs
    assert sampled.shape == (2,) and top_ids.shape == top_logprobs.shape == (2, 0)


def test_mixed_greedy_and_sampled_batch():
    logits = torch.tensor([1.0, 0.9, 0.8, 0.7, -5.0, -5.0]).repeat(400, 1)
    params = [SamplingParams(temperature=0) if row % 2 == 0 else SamplingParams(top_k=3) for row in range(400)]
    metadata = build(params, vocab_size=6)
    assert not metadata.all_greedy and not metadata.all_random
    tokens = Sampler()(logits, metadata).sampled_token_ids
    assert (tokens[0::2] == 0).all()
    assert set(tokens[1::2].tolist()) == {0, 1, 2}  # top-3 only, and all three actually drawn


def test_metadata_builds_only_what_some_row_needs():
    plain = build([SamplingParams(), SamplingParams(temperature=0)])
    assert all(getattr(plain, name) is None for name in (
        "top_k", "top_p", "min_p", "repetition_penalty", "seen_mask", "presence_penalty", "frequency_penalty",
        "output_counts", "banned_mask", "max_num_logprobs"))
    assert plain.temperature.tolist() == [1.0, 1.0] and plain.is_greedy.tolist() == [False, True]


def test_metadata_counts_generated_tokens_and_ignores_ids_outside_the_vocabulary():
    image_token = 4  # as Mllama's: one past the LM head
    metadata = build([SamplingParams(frequency_penalty=1.0, repetition_penalty=1.1)] * 2,
                     prompts=[[image_token, 0], [3]], outputs=[[2, 2, image_token], []], banned=[[1, image_token], []])
    assert metadata.output_counts.tolist() == [[0, 0, 2, 0], [0, 0, 0, 0]]
    assert metadata.seen_mask.tolist() == [[True, False, True, False], [False, False, False, True]]
    assert metadata.banned_mask.tolist() == [[False, True, False, False], [False] * 4]


def test_callers_logits_are_not_modified():
    logits = torch.randn(2, 8, generator=seeded(5))
    original = logits.clone()
    params = [SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0, top_p=0.5, min_p=0.1, temperature=0.7)] * 2
    Sampler()(logits, build(params, prompts=[[0, 1]] * 2, outputs=[[2]] * 2, banned=[[3], [4]], vocab_size=8))
    assert torch.equal(logits, original)
