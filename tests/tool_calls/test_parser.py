"""Tool calls parsed out of model output: a corpus of both families' outputs, and what must stay content."""

import random

import pytest

from vlmserve.tool_calls.parser import parse_tool_calls
from vlmserve.tool_calls.render import render_calls
from vlmserve.tool_calls.types import ToolCall

NAMES = ["get_weather", "get", "search-web", "1st_tool"]
WEATHER = ToolCall("get_weather", {"city": "Paris"})

CALLS = [  # (output, content, calls)
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [WEATHER]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>', None, [WEATHER]),
    ('{"type": "function", "name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', None, [WEATHER]),
    ('{"name": "get", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Paris"}}', None,
     [ToolCall("get"), WEATHER]),
    ('[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get", "arguments": {}}]', None,
     [WEATHER, ToolCall("get")]),
    ('[get_weather(city="Paris")]', None, [WEATHER]),
    ('<|python_start|>[get_weather(city="Paris"), get()]<|python_end|><|eot|>', None, [WEATHER, ToolCall("get")]),
    ('[get_weather(city="San Francisco", metric=\'celsius\'), get_weather(city="Seattle")]', None,
     [ToolCall("get_weather", {"city": "San Francisco", "metric": "celsius"}),
      ToolCall("get_weather", {"city": "Seattle"})]),
    ('[search-web(q="a], b(\\"c\\")", filters={"site": ["x.org", None], "n": -3, "ok": true, "f": 1.5e3})]', None,
     [ToolCall("search-web", {"q": 'a], b("c")', "filters": {"site": ["x.org", None], "n": -3, "ok": True,
                                                              "f": 1500.0}})]),
    ('[1st_tool(city="東京", mood="🎉", escaped="\\u00e9\\ud83d\\ude00", t=(1, 2))]', None,
     [ToolCall("1st_tool", {"city": "東京", "mood": "🎉", "escaped": "é😀", "t": [1, 2]})]),
    ('Let me check the weather. [get_weather(city="Paris")]', "Let me check the weather.", [WEATHER]),
    ('Sure!\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n\nDone.', "Sure!\n\n\n\nDone.", [WEATHER]),
]
CONTENT = [  # outputs that are not calls, whatever they look like
    '{"name": "Bob", "age": 3}',
    '{"name": "get_weather", "parameters": [1, 2]}',
    '{"name": "get_weather", "parameters": {"x": NaN}}',
    '{"name": "get_weather", "parameters": {}, "extra": 1}',
    '[1, 2, 3]',
    'See [the docs](https://example.com) and [get_weather] for more.',
    '[unknown_tool(a=1)]',
    '[get_weather("Paris")]',
    '[get_weather(city=open("x"))]',
    '[get_weather(city="Paris"',
    '[get_weather(city="hal',
    '{"name": "get_weather", "parameters": {"city": "Par',
    '```python\nprint([x for x in range(3)])\n```',
    "[get_weather(city=b'bytes')]",
    "[get_weather(**kwargs)]",
]


@pytest.mark.parametrize("output, content, calls", CALLS)
def test_calls_are_found(output, content, calls):
    parsed = parse_tool_calls(output, NAMES)
    assert parsed.content == content
    assert list(parsed.calls) == calls


@pytest.mark.parametrize("output", CONTENT)
def test_text_that_only_looks_like_a_call_stays_content(output):
    parsed = parse_tool_calls(output, NAMES)
    assert parsed == type(parsed)(output.strip(), ())


def test_empty_and_whitespace_are_no_content():
    assert parse_tool_calls("", NAMES).content is None
    assert parse_tool_calls(" \n ", NAMES).content is None
    assert parse_tool_calls("[get()]", []).content == "[get()]"


@pytest.mark.parametrize("tool_format", ["json", "pythonic"])
def test_rendered_calls_parse_back(tool_format):
    calls = [ToolCall("get_weather", {"city": "Kyōto \"old\" town", "days": [1, 2.5, None], "opts": {"a": True}}),
             ToolCall("search-web", {"q": "it's [x], (y)"})]
    rendered = calls[:1] if tool_format == "json" else calls
    text = render_calls(rendered, tool_format)
    assert list(parse_tool_calls(text, NAMES).calls) == rendered
    assert list(parse_tool_calls(render_calls(calls, "json"), NAMES).calls) == calls


def test_random_text_never_raises():
    rng = random.Random(0)
    alphabet = '[]{}()"\',=:; \\nget_weather1.-eE TrueNone<|python_tag|>'
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        parsed = parse_tool_calls(text, NAMES)
        assert parsed.calls or parsed.content == (text.strip() or None)


def test_deep_nesting_and_long_text_stay_content():
    assert parse_tool_calls("[" * 5000, NAMES).content == "[" * 5000
    deep = "[get(a=" + "[" * 3000 + "]" * 3000 + ")]"  # past what Python's parser nests: content, no error
    assert parse_tool_calls(deep, NAMES).content == deep
    prose = "word {x} [y] " * 5000
    assert parse_tool_calls(prose, NAMES).content == prose.strip()
