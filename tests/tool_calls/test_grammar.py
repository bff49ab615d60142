"""The grammars that enforce tool calls, compiled as the engine compiles them over the real Llama vocabulary: what
each accepts and refuses, and that every accepted call parses back into the call it spells."""

import re

import jsonschema
import pytest
import xgrammar as xgr

from vlmserve.engine.structured_output import StructuredOutputManager
from vlmserve.tokenizer.tokenizer import load_tokenizer
from vlmserve.tool_calls.grammar import tool_call_constraint
from vlmserve.tool_calls.parser import parse_tool_calls
from vlmserve.tool_calls.types import Tool

LLAMA3_VOCAB = 128256
WEATHER = Tool("get_weather", parameters={
    "type": "object", "required": ["city"], "additionalProperties": False,
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer"}}})
NOW = Tool("now")
OPTIONAL = Tool("opt", parameters={"type": "object", "properties": {"a": {"type": "integer"},
                                                                  "b": {"type": "boolean"}}})
TOOLS = [WEATHER, NOW, OPTIONAL]
SCHEMAS = {tool.name: tool.parameters for tool in TOOLS}

PYTHONIC_CALLS = [
    '[get_weather(city="Paris")]',
    '[get_weather(city="a(b), c]", days=3)]',  # a string with brackets, then ")" after it (no JSON lookahead)
    '[get_weather(city="東京 \\"x\\"", unit="c", days=-2)]',
    '[now()]', '[opt()]', '[opt(b=true)]', '[opt(a=1, b=false)]',
    '[now(), opt(a=2), get_weather(city="Rome")]',
]
PYTHONIC_REFUSED = [
    '[get_weather(days=3)]',  # a required argument missing
    '[opt(b=true, a=1)]',  # out of the schema's order
    '[get_weather(city="a", unit="x")]',
    '[get_weather(city=1)]',
    '[opt(a=1,)]', '[now(),now()]', '[nope()]', 'hello', '', '[get_weather(city="a")',
]


@pytest.fixture(scope="module")
def manager():
    return StructuredOutputManager(load_tokenizer(), LLAMA3_VOCAB)


def accepts(manager, params, text: str) -> bool:
    """Whether the compiled grammar takes exactly `text` and may then end."""
    matcher = xgr.GrammarMatcher(manager.compile(params))
    return matcher.accept_string(text) and matcher.accept_token(manager.tokenizer.stop_token_ids[0])


@pytest.mark.parametrize("text", PYTHONIC_CALLS)
def test_pythonic_required_accepts_calls_that_match_and_parse_back(manager, text):
    assert accepts(manager, tool_call_constraint("pythonic", TOOLS), text)
    parsed = parse_tool_calls(text, [tool.name for tool in TOOLS])
    assert parsed.content is None and parsed.calls
    for call in parsed.calls:
        jsonschema.validate(call.arguments, SCHEMAS[call.name] or {"type": "object", "maxProperties": 0})


@pytest.mark.parametrize("text", PYTHONIC_REFUSED)
def test_pythonic_required_refuses_what_breaks_the_schemas(manager, text):
    assert not accepts(manager, tool_call_constraint("pythonic", TOOLS), text)


def test_pythonic_named_single_and_text_choices(manager):
    named = tool_call_constraint("pythonic", TOOLS, only="opt")
    assert accepts(manager, named, "[opt(a=1)]") and not accepts(manager, named, "[now()]")
    single = tool_call_constraint("pythonic", TOOLS, parallel=False)
    assert accepts(manager, single, "[now()]") and not accepts(manager, single, "[now(), now()]")
    loose = Tool("get_weather", parameters=WEATHER.parameters)
    strict = Tool("now", strict=True)
    text_or_call = tool_call_constraint("pythonic", [loose, strict], allow_text=True)
    for text in ("It is sunny.", "", "[get_weather(anything=[1, {\"a\": null}], x=\"y\")]", "[now()]"):
        assert accepts(manager, text_or_call, text), text
    for text in ("[now(x=1)]", "[get_weather(1)]", "[elsewhere"):
        assert not accepts(manager, text_or_call, text), text


def test_json_required_accepts_one_compact_call(manager):
    required = tool_call_constraint("json", TOOLS)
    assert accepts(manager, required, '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}')
    assert not accepts(manager, required, '{"name": "get_weather", "parameters": {"days": 2}}')
    text_or_call = tool_call_constraint("json", [Tool("now", strict=True)], allow_text=True)
    assert accepts(manager, text_or_call, "Hi") and accepts(manager, text_or_call, '{"name": "now", "parameters": {}}')


@pytest.mark.parametrize(("parameters", "message"), [
    ({"type": "object", "properties": {"from": {"type": "string"}}}, "property 'from' cannot be a keyword argument"),
    ({"type": "object", "properties": {"a-b": {}}}, "property 'a-b' cannot be a keyword argument"),
    ({"anyOf": [{"type": "object"}]}, "'anyOf' at the top of a schema cannot be enforced"),
    ({"type": "array"}, "type 'array' at the top"),
    ({"type": "object", "properties": {}, "required": ["x"]}, "required names 'x', which is not in properties"),
])
def test_pythonic_schemas_a_call_cannot_express_are_refused_naming_the_tool(parameters, message):
    tools = [NOW, Tool("bad", parameters=parameters)]
    with pytest.raises(ValueError, match="^tools\\[1\\].function.parameters: .*" + message):
        tool_call_constraint("pythonic", tools)


NESTED = Tool("book", parameters={  # as pydantic writes a model with a nested one
    "type": "object", "required": ["guest"], "additionalProperties": False,
    "properties": {"guest": {"$ref": "#/$defs/Guest"}, "nights": {"type": "integer"}},
    "$defs": {"Guest": {"type": "object", "required": ["name", "kind"], "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "kind": {"$ref": "#/definitions/Kind"}}}},
    "definitions": {"Kind": {"enum": ["adult", "child"]}}})


@pytest.mark.parametrize(("tool_format", "good", "bad"), [
    ("json", '{"name": "book", "parameters": {"guest": {"name": "Ada", "kind": "adult"}, "nights": 2}}',
     '{"name": "book", "parameters": {"guest": {"name": "Ada", "kind": "cat"}}}'),
    ("pythonic", '[book(guest={"name": "Ada", "kind": "child"}, nights=2)]', '[book(guest={"name": "Ada"})]'),
])
def test_schemas_with_definitions_are_enforced(manager, tool_format, good, bad):
    other = Tool("other", parameters={**NESTED.parameters, "$defs": {"Guest": {"type": "integer"}}})
    constraint = tool_call_constraint(tool_format, [other, NESTED])  # each tool's Guest is its own
    assert accepts(manager, constraint, good) and not accepts(manager, constraint, bad)


@pytest.mark.parametrize("tool_format", ["json", "pythonic"])
@pytest.mark.parametrize("ref", ["#/$defs/Missing", "#", "https://example.com/schema.json", "#/properties/a"])
def test_references_a_grammar_cannot_follow_are_refused_naming_the_tool(tool_format, ref):
    tool = Tool("bad", parameters={"type": "object", "properties": {"a": {"$ref": ref}}, "$defs": {"X": {}}})
    with pytest.raises(ValueError, match=f"^tools\\[1\\].function.parameters: \\$ref '{re.escape(ref)}' is not"):
        tool_call_constraint(tool_format, [NOW, tool])


@pytest.mark.parametrize(("tool_format", "call"), [("json", '{"name": "now", "parameters": {}}'),
                                                   ("pythonic", "[now()]")])
def test_text_answers_follow_the_text_schema(manager, tool_format, call):
    mood = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"]}
    constraint = tool_call_constraint(tool_format, [NOW], allow_text=True, text_schema=mood)
    assert accepts(manager, constraint, call) and accepts(manager, constraint, '{"mood": "sad"}')
    for text in ("I am sad.", '{"mood": "angry"}', ""):
        assert not accepts(manager, constraint, text), text
