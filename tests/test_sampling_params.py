"""SamplingParams: vLLM's defaults, normalisation, and a ValueError naming the parameter for every bad value."""

from dataclasses import asdict, replace

import pytest

from vlmserve.sampling_params import SamplingParams, StructuredOutputsParams


def test_defaults_match_vllm():
    assert asdict(SamplingParams()) == dict(
        n=1, temperature=1.0, top_p=1.0, top_k=-1, min_p=0.0, presence_penalty=0.0, frequency_penalty=0.0,
        repetition_penalty=1.0, seed=None, stop=[], stop_token_ids=[], max_tokens=16, min_tokens=0,
        ignore_eos=False, logprobs=None, include_stop_str_in_output=False, skip_special_tokens=True,
        structured_outputs=None)


@pytest.mark.parametrize("stop, expected", [(None, []), ("###", ["###"]), (["a", "bc"], ["a", "bc"]),
                                            (("x", "y"), ["x", "y"])])
def test_stop_is_normalised_to_a_list(stop, expected):
    assert SamplingParams(stop=stop).stop == expected


@pytest.mark.parametrize("stop_token_ids, expected", [(None, []), ([], []), ([7, 9], [7, 9]), ((3,), [3])])
def test_stop_token_ids_are_normalised_to_a_list(stop_token_ids, expected):
    assert SamplingParams(stop_token_ids=stop_token_ids).stop_token_ids == expected


def test_integer_floats_become_floats():
    params = SamplingParams(temperature=0, top_p=1, repetition_penalty=2)
    assert (params.temperature, params.top_p, params.repetition_penalty) == (0.0, 1.0, 2.0)
    assert all(isinstance(v, float) for v in (params.temperature, params.top_p, params.repetition_penalty))


@pytest.mark.parametrize("kwargs, is_greedy", [
    (dict(temperature=0.0), True), (dict(top_k=1), True), (dict(temperature=0.7, top_k=1), True),
    (dict(), False), (dict(temperature=0.01), False), (dict(top_k=2), False), (dict(top_k=0), False)])
def test_is_greedy(kwargs, is_greedy):
    assert SamplingParams(**kwargs).is_greedy is is_greedy


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0), dict(top_p=1.0), dict(top_p=1e-6), dict(top_k=-1), dict(top_k=0), dict(top_k=1),
    dict(min_p=0.0), dict(min_p=1.0), dict(presence_penalty=-2.0), dict(presence_penalty=2.0),
    dict(frequency_penalty=-2), dict(frequency_penalty=2), dict(repetition_penalty=0.01), dict(seed=0),
    dict(seed=-5), dict(max_tokens=None), dict(max_tokens=1), dict(min_tokens=16), dict(min_tokens=100, max_tokens=None),
    dict(logprobs=0), dict(logprobs=20), dict(n=4)])
def test_boundary_values_are_accepted(kwargs):
    params = SamplingParams(**kwargs)
    assert all(getattr(params, name) == value for name, value in kwargs.items())


@pytest.mark.parametrize("name, value", [
    ("n", 0), ("n", 1.0), ("n", True),
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", "1"),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", None),
    ("top_k", -2), ("top_k", 2.0),
    ("min_p", -0.1), ("min_p", 1.5),
    ("presence_penalty", -2.1), ("presence_penalty", 2.1),
    ("frequency_penalty", -2.1), ("frequency_penalty", 3),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("seed", 1.5), ("seed", "7"), ("seed", False),
    ("stop", ""), ("stop", ["ok", ""]), ("stop", [1]), ("stop", 5),
    ("stop_token_ids", [-1]), ("stop_token_ids", ["2"]), ("stop_token_ids", 2),
    ("max_tokens", 0), ("max_tokens", 2.5),
    ("min_tokens", -1), ("min_tokens", 17),
    ("logprobs", -1), ("logprobs", 21), ("logprobs", 1.0),
    ("ignore_eos", 1), ("include_stop_str_in_output", "yes"), ("skip_special_tokens", None),
])
def test_invalid_value_raises_naming_the_parameter(name, value):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**{name: value})


def test_replace_revalidates():
    with pytest.raises(ValueError, match="max_tokens"):
        replace(SamplingParams(), max_tokens=0)
    assert replace(SamplingParams(stop="x"), max_tokens=3).stop == ["x"]


@pytest.mark.parametrize("fields, kind", [
    (dict(json={"type": "object"}), "json"), (dict(json_object=True), "json_object"), (dict(regex="a+"), "regex"),
    (dict(choice=("yes", "no")), "choice"), (dict(grammar='root ::= "x"'), "grammar"),
    (dict(json_object=True, disable_any_whitespace=True), "json_object")])
def test_structured_outputs_take_exactly_one_kind(fields, kind):
    assert StructuredOutputsParams(**fields).kind == kind


def test_structured_outputs_normalise_json_text_and_choice_tuples():
    assert StructuredOutputsParams(json='{"type": "integer"}').json == {"type": "integer"}
    assert StructuredOutputsParams(choice=("a", "b")).choice == ["a", "b"]


def test_sampling_params_accept_a_dict_of_structured_outputs():
    params = SamplingParams(structured_outputs={"regex": "[0-9]+"})
    assert params.structured_outputs == StructuredOutputsParams(regex="[0-9]+")
    assert replace(params, max_tokens=3).structured_outputs == params.structured_outputs


@pytest.mark.parametrize("fields, match", [
    (dict(), "exactly one of json, regex, choice, grammar, json_object, structural_tag; got none"),
    (dict(regex="a", choice=["a"]), "got regex and choice"),
    (dict(json={"type": "object"}, json_object=True), "got json and json_object"),
    (dict(disable_any_whitespace=True), "got none"),
    (dict(json="{not json"), "structured_outputs.json is not valid JSON"),
    (dict(json="[1, 2]"), "structured_outputs.json must be a JSON schema object"),
    (dict(json=3), "structured_outputs.json must be a JSON schema object"),
    (dict(regex=""), "structured_outputs.regex must be a non-empty string"),
    (dict(grammar=5), "structured_outputs.grammar must be a non-empty string"),
    (dict(choice=[]), "structured_outputs.choice must be a non-empty list of strings"),
    (dict(choice=["a", 1]), "structured_outputs.choice"),
    (dict(choice="yes"), "structured_outputs.choice"),
    (dict(json_object=1), "structured_outputs.json_object must be a bool"),
    (dict(regex="a", disable_any_whitespace="no"), "structured_outputs.disable_any_whitespace must be a bool"),
])
def test_invalid_structured_outputs_raise_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        StructuredOutputsParams(**fields)
    with pytest.raises(ValueError, match=match):
        SamplingParams(structured_outputs=fields)


@pytest.mark.parametrize("value, match", [
    ({"regex": "a", "schema": {}}, r"unknown field\(s\) \['schema'\]"), ("a+", "must be a StructuredOutputsParams")])
def test_structured_outputs_of_the_wrong_shape_raise(value, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(structured_outputs=value)
