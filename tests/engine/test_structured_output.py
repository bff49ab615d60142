"""Grammar-constrained decoding on the tiny demo checkpoint: random weights emit garbage, so every constraint that
holds in these outputs holds because the grammar mask forced it."""

import json
import re

import jsonschema
import pytest
import torch

from vlmserve import LLM, SamplingParams
from vlmserve.engine.structured_output import StructuredOutputManager
from vlmserve.sampling_params import StructuredOutputsParams
from vlmserve.tokenizer.tokenizer import load_tokenizer

PROMPT = "Answer in JSON:"
SEEDS = range(4)
# Bounded (enums, integer range, maxItems, compact JSON), so the random model always reaches the end.
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["color", "count", "flags"],
}
SCHEMA_OUTPUT = {"json": SCHEMA, "disable_any_whitespace": True}


@pytest.fixture(scope="module")
def llm(demo_model_dir):
    return LLM(demo_model_dir, dtype="float32", device="cpu", num_kv_blocks=128)


def generate(llm, structured_outputs, max_tokens=64, **options):
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, structured_outputs=structured_outputs,
                             **options) for seed in SEEDS]
    return [o.outputs[0] for o in llm.generate([PROMPT] * len(params), params, use_tqdm=False)]


def test_json_object_output_parses_whenever_the_grammar_ends(llm):
    outputs = generate(llm, {"json_object": True, "disable_any_whitespace": True}, max_tokens=24)
    stopped = [o for o in outputs if o.finish_reason == "stop"]
    assert stopped, "no seed closed its object: pick other seeds"
    for output in stopped:
        assert isinstance(json.loads(output.text), dict)
    for output in outputs:
        assert output.text.startswith("{")


def test_json_schema_output_validates_for_each_of_n_completions(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=64, structured_outputs=SCHEMA_OUTPUT)
    for seed_params in (params, SamplingParams(**{**params.__dict__, "seed": 8})):
        completions = llm.generate(PROMPT, seed_params, use_tqdm=False)[0].outputs
        assert len({c.text for c in completions}) > 1  # each completion follows its own matcher
        for completion in completions:
            assert completion.finish_reason == "stop"
            jsonschema.validate(json.loads(completion.text), SCHEMA)


def test_choice_and_regex(llm):
    choices = ["yes", "no", "maybe"]
    for output in generate(llm, {"choice": choices}):
        assert output.finish_reason == "stop" and output.text in choices
    for output in generate(llm, {"regex": "[0-9]{3}-[a-z]{2}"}):
        assert output.finish_reason == "stop" and re.fullmatch("[0-9]{3}-[a-z]{2}", output.text)


def test_grammar_ends_the_completion_without_stop_tokens_or_before_min_tokens(llm):
    choices = ["yes", "no", "maybe"]
    for options in (dict(ignore_eos=True), dict(min_tokens=10)):
        for output in generate(llm, {"choice": choices}, **options):
            assert output.finish_reason == "stop" and output.text in choices


@pytest.mark.parametrize("structured_outputs, match", [
    ({"json": {"type": "nonsense"}}, "structured_outputs.json"),
    ({"regex": "[0-9"}, "structured_outputs.regex.*Unclosed"),
    ({"grammar": "root ::= missing_rule"}, "structured_outputs.grammar.*missing_rule"),
])
def test_invalid_constraint_raises_at_generate_and_the_engine_serves_on(llm, structured_outputs, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(PROMPT, SamplingParams(structured_outputs=structured_outputs), use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    output = generate(llm, {"choice": ["a", "b"]})[0]
    assert output.text in ("a", "b")
    assert len(llm.engine.structured_output) == 0  # every matcher was freed


def test_constraints_do_not_leak_into_unconstrained_rows(llm):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    plain_prompts = ["The weather today", "Once upon a time"]
    alone = [o.outputs[0].token_ids for o in llm.generate(plain_prompts, greedy, use_tqdm=False)]
    constrained = SamplingParams(temperature=1.0, seed=3, max_tokens=64, structured_outputs=SCHEMA_OUTPUT)
    mixed = llm.generate([plain_prompts[0], PROMPT, plain_prompts[1], PROMPT],
                         [greedy, constrained, greedy, constrained], use_tqdm=False)
    assert [mixed[0].outputs[0].token_ids, mixed[2].outputs[0].token_ids] == alone
    for output in (mixed[1].outputs[0], mixed[3].outputs[0]):
        jsonschema.validate(json.loads(output.text), SCHEMA)


def test_max_tokens_before_the_grammar_ends_finishes_with_length(llm):
    """The text is then a cut-off prefix of valid JSON: "length" tells the client it may not parse."""
    for output in generate(llm, SCHEMA_OUTPUT, max_tokens=4):
        assert output.finish_reason == "length" and len(output.token_ids) == 4
        forced = '{"color": "'  # the schema's only way to start, in compact JSON
        common = min(len(forced), len(output.text))
        assert output.text[:common] == forced[:common]
        with pytest.raises(json.JSONDecodeError):
            json.loads(output.text)


def test_preemption_keeps_each_matcher_in_step(llm, demo_model_dir):
    """A preempted sequence is prefilled again with its outputs; its matcher must not accept them twice."""
    tight = LLM(demo_model_dir, dtype="float32", device="cpu", num_kv_blocks=16, block_size=4)
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=40, structured_outputs=SCHEMA_OUTPUT)
              for seed in range(3)]  # each needs ~10 of the 16 blocks by its end
    prompts = [f"Request {i} wants JSON:" for i in range(3)]
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    got = [o.outputs[0] for o in tight.generate(prompts, params, use_tqdm=False)]
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in got] == expected
    for output in got:
        jsonschema.validate(json.loads(output.text), SCHEMA)
    assert len(tight.engine.structured_output) == 0


def test_mask_bans_special_and_padding_ids_and_allows_stop_only_at_the_end():
    tokenizer = load_tokenizer()
    vocab_size = 128256 + 64  # an LM head padded past the tokenizer (which ends with the image token, 128256)
    manager = StructuredOutputManager(tokenizer, vocab_size)
    eot = tokenizer.eos_token_id
    manager.add(0, manager.compile(StructuredOutputsParams(choice=["ab"])), (eot,))
    banned = manager.banned_mask([5, 0], torch.device("cpu"))  # row 0 is unconstrained
    assert banned.shape == (2, vocab_size) and not banned[0].any()
    assert banned[1, tokenizer.image_token_id:].all() and banned[1, tokenizer.bos_token_id] and banned[1, eot]
    allowed = (~banned[1]).nonzero().flatten().tolist()
    assert all("ab".startswith(tokenizer.decode([i])) for i in allowed)
    for token_id in tokenizer.encode("ab"):
        manager.accept(0, token_id)
    assert (~manager.banned_mask([0], torch.device("cpu"))[0]).nonzero().flatten().tolist() == [eot]
    manager.accept(0, eot)
    assert manager.is_terminated(0)
    manager.release(0)
    assert len(manager) == 0 and manager.banned_mask([0], torch.device("cpu")) is None
