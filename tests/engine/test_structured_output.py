"""Grammar-constrained decoding on the tiny demo checkpoint: random weights emit garbage, so every constraint that
holds in these outputs holds because the grammar mask forced it."""

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import torch
import xgrammar as xgr

from vlmserve import LLM, SamplingParams
from vlmserve.engine import grammar_limits
from vlmserve.engine.structured_output import GRAMMAR_CACHE_BYTES, MAX_JSON_WHITESPACE, StructuredOutputManager
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


def test_structural_tag(llm):
    number = {"type": "json_schema", "json_schema": {"type": "integer", "minimum": 0, "maximum": 99}}
    tag = {"type": "structural_tag", "format": {"type": "sequence", "elements": [
        {"type": "const_string", "value": "f(a="}, number, {"type": "const_string", "value": ")"}]}}
    for output in generate(llm, {"structural_tag": tag}):
        assert output.finish_reason == "stop" and re.fullmatch(r"f\(a=([0-9]|[1-9][0-9])\)", output.text)


def test_grammar_ends_the_completion_without_stop_tokens_or_before_min_tokens(llm):
    choices = ["yes", "no", "maybe"]
    for options in (dict(ignore_eos=True), dict(min_tokens=10)):
        for output in generate(llm, {"choice": choices}, **options):
            assert output.finish_reason == "stop" and output.text in choices


@pytest.mark.parametrize("structured_outputs, match", [
    ({"json": {"type": "nonsense"}}, "structured_outputs.json is invalid"),
    ({"regex": "[0-9"}, "structured_outputs.regex.*Unclosed"),
    ({"grammar": "root ::= missing_rule"}, "structured_outputs.grammar.*missing_rule"),
    ({"structural_tag": {"type": "structural_tag", "format": {"type": "nonsense"}}},
     "structured_outputs.structural_tag is invalid"),
    ({"structural_tag": '{"type": "grammar"}'}, "structured_outputs.structural_tag must be"),
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


LLAMA3_VOCAB = 128256  # the real vocabulary, so compile costs are the production ones


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def manager(tokenizer):
    return StructuredOutputManager(tokenizer, LLAMA3_VOCAB)


def nested(depth: int, keywords=("properties",)) -> dict:
    """A schema `depth` subschemas deep (the root is 1), each level nesting through the next of `keywords`."""
    schema = {"type": "string"}
    for level in range(depth - 1):
        keyword = keywords[level % len(keywords)]
        schema = {
            "properties": {"type": "object", "properties": {"a": schema}, "required": ["a"]},
            "items": {"type": "array", "items": schema},
            "anyOf": {"anyOf": [{"type": "null"}, schema]},
            "additionalProperties": {"type": "object", "additionalProperties": schema},
        }[keyword]
    return schema


def properties(count: int, required: bool) -> dict:
    names = [f"field_{i}" for i in range(count)]
    return {"type": "object", "properties": {name: {"type": "string"} for name in names},
            "required": names if required else []}


MIXED = ("properties", "items", "anyOf", "additionalProperties")
REPEAT = "repetition count ({m,n} bounds, nested ones multiplied) is"
OVER_THE_LIMITS = {  # each took seconds to minutes to compile, or grows into that
    "depth 450": ({"json": nested(450)}, "schema nesting depth is 450, more than the 32 allowed"),
    "mixed depth 33": ({"json": nested(33, MIXED)}, "schema nesting depth is 33"),
    "depth in $defs": ({"json": {"$defs": {"d": nested(32)}, "$ref": "#/$defs/d"}}, "nesting depth is 33"),
    "schema bytes": ({"json": {"type": "string", "description": "x" * 200_000}}, "schema size in bytes is 2000"),
    "optional properties": ({"json": properties(129, required=False)}, "optional properties of one object is 129"),
    "enum values": ({"json": {"enum": list(range(1001))}}, "number of enum values is 1001"),
    "const length": ({"json": {"const": "x" * 20_000}}, "total length of enum and const values is 20002"),
    "pattern repeat": ({"json": {"type": "string", "pattern": "a{100000}"}}, f"pattern {REPEAT} 100000"),
    "patterns together": ({"json": {"type": "array", "prefixItems": [{"pattern": "[a-z]{400}"}] * 3}},
                          "repetition count of all patterns together is 1200"),
    "converted size": ({"json": properties(1000, required=True)}, "converted grammar length is"),
    "regex repeat": ({"regex": "a{100000}"}, f"{REPEAT} 100000"),
    "nested regex repeat": ({"regex": "(x|(a{1000}b)){1000}"}, f"{REPEAT} 1000000"),
    "huge bound": ({"regex": "a{" + "9" * 5000 + "}"}, f"{REPEAT} 1000000000"),
    "regex length": ({"regex": "a" * 10_000}, "length is 10000, more than the 8192 allowed"),
    "choices": ({"choice": [str(i) for i in range(1001)]}, "count is 1001"),
    "choice length": ({"choice": ["x" * 7000, "y" * 7000]}, "total length is 14000"),
    "grammar length": ({"grammar": "root ::= " + " | ".join(f'"{i}"' for i in range(300_000))}, "length is"),
}


@pytest.mark.parametrize("structured_outputs, message", OVER_THE_LIMITS.values(), ids=OVER_THE_LIMITS)
def test_each_limit_is_refused_at_once_naming_the_field(manager, structured_outputs, message):
    params = StructuredOutputsParams(**structured_outputs)
    started = time.monotonic()
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        manager.compile(params)
    assert time.monotonic() - started < 1  # a liveness bound, far below what compiling these took
    assert str(refused.value).startswith(f"structured_outputs.{params.kind} ")


def test_repetitions_in_classes_escapes_and_unbounded_ones_are_not_counted():
    assert grammar_limits.check_regex("f", r"[{1000}]\{1000}a*(b+)?c{3,}(d{2}){5}") == 10


@pytest.mark.parametrize("structured_outputs", [
    {"json": nested(32)}, {"json": nested(32, MIXED), "disable_any_whitespace": True},
    {"json": {"$defs": {"d": nested(31)}, "$ref": "#/$defs/d"}},
    {"json": properties(128, required=False)}, {"json": {"type": "string", "pattern": "(a{10}){100}"}},
    {"regex": "(a{10}){100}"}, {"choice": [f"option {i}" for i in range(1000)]},
])
def test_inputs_at_the_limits_compile(manager, structured_outputs):
    assert isinstance(manager.compile(StructuredOutputsParams(**structured_outputs)), xgr.CompiledGrammar)


def test_a_deep_schema_under_the_limit_constrains_exactly(manager):
    grammar = manager.compile(StructuredOutputsParams(json=nested(32)))
    value = '"leaf"'
    for _ in range(31):
        value = '{"a": ' + value + "}"
    matcher = xgr.GrammarMatcher(grammar)
    assert matcher.accept_string(value) and matcher.is_completed()
    assert not xgr.GrammarMatcher(grammar).accept_string('{"b"')


@pytest.mark.parametrize("structured_outputs, direct", [
    ({"json": SCHEMA}, lambda c: c.compile_json_schema(json.dumps(SCHEMA), any_whitespace=True,
                                                      max_whitespace_cnt=MAX_JSON_WHITESPACE)),
    (SCHEMA_OUTPUT, lambda c: c.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                   max_whitespace_cnt=MAX_JSON_WHITESPACE)),
    ({"regex": "[0-9]{3}-[a-z]{2}"}, lambda c: c.compile_regex("[0-9]{3}-[a-z]{2}")),
    ({"grammar": 'root ::= "a" x*\nx ::= [b-d]'}, lambda c: c.compile_grammar('root ::= "a" x*\nx ::= [b-d]')),
])
def test_converting_first_compiles_the_grammar_xgrammar_compiles_directly(manager, structured_outputs, direct):
    compiled = manager.compile(StructuredOutputsParams(**structured_outputs))
    assert str(compiled.grammar) == str(direct(manager._grammar_compiler()).grammar)


def test_the_compiled_grammar_cache_is_bounded(manager):
    manager.compile(StructuredOutputsParams(choice=["a"]))
    assert 0 < manager._grammar_compiler().cache_limit_bytes <= GRAMMAR_CACHE_BYTES  # -1 would be unbounded


def test_a_compile_over_budget_is_refused_and_busy_workers_refuse_the_next(tokenizer):
    manager = StructuredOutputManager(tokenizer, LLAMA3_VOCAB, compile_budget_s=0.001, compile_workers=1)
    slow = StructuredOutputsParams(json=properties(128, required=False))  # ~0.1 s: holds the one worker
    with pytest.raises(ValueError, match=r"^structured_outputs\.json took longer than 0\.001 s to compile"):
        manager.compile(slow)
    with pytest.raises(ValueError, match=r"^structured_outputs\.choice cannot be compiled now: every grammar "
                                         r"compile worker stayed busy"):
        manager.compile(StructuredOutputsParams(choice=["a", "b"]))
    manager.compile_budget_s = 30
    assert isinstance(manager.compile(slow), xgr.CompiledGrammar)  # the worker came back (and cached the grammar)
    with pytest.raises(ValueError, match="is invalid"):  # errors still come back through the worker
        manager.compile(StructuredOutputsParams(regex="[0-9"))


def test_concurrent_compiles_share_one_compiler(tokenizer, monkeypatch):
    built = []
    compiler_class = xgr.GrammarCompiler
    monkeypatch.setattr(xgr, "GrammarCompiler", lambda *a, **k: built.append(1) or compiler_class(*a, **k))
    manager = StructuredOutputManager(tokenizer, LLAMA3_VOCAB)
    requests = [StructuredOutputsParams(choice=[f"c{i % 6}", "x"]) for i in range(24)]
    barrier = threading.Barrier(8)

    def compile_together(params):
        barrier.wait()  # eight at a time, the first eight racing to build the compiler
        return manager.compile(params)
    with ThreadPoolExecutor(8) as pool:
        compiled = list(pool.map(compile_together, requests))
    assert built == [1]
    for params, grammar in zip(requests, compiled):
        matcher = xgr.GrammarMatcher(grammar, terminate_without_stop_token=True)
        assert matcher.accept_string(params.choice[0]) and matcher.is_terminated()
