"""Streamed tool calls: whatever the split, the sent content joined with the rest equals the whole-text parse."""

import random

import pytest

from tests.tool_calls.test_parser import CALLS, CONTENT, NAMES
from vlmserve.tool_calls.parser import parse_tool_calls
from vlmserve.tool_calls.streaming import ToolCallStreamer

OUTPUTS = [output for output, _, _ in CALLS] + CONTENT + [
    "See [1] and [2] for details.", "  spaced  out  ", "a < b and <|python", "{", "[", "[get", "[ get_weather (",
    'Text first. {"x": 1} then {"name": "get", "parameters": {}} and after.']


def stream(text: str, pieces: list[str]) -> tuple[str, object]:
    streamer = ToolCallStreamer(NAMES)
    sent = "".join(streamer.feed(piece) for piece in pieces)
    return sent, streamer.finish()


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("text", OUTPUTS)
def test_any_split_joins_to_the_whole_answer(text):
    whole = parse_tool_calls(text, NAMES)
    rng = random.Random(text)
    splits = [split(text, [cut]) for cut in range(len(text) + 1)] + [list(text)]
    splits += [split(text, rng.sample(range(len(text) + 1), min(5, len(text) + 1))) for _ in range(20)]
    for pieces in splits:
        sent, rest = stream(text, pieces)
        assert sent + (rest.content or "") == (whole.content or "")
        assert rest.calls == whole.calls


def test_prose_with_brackets_streams_before_the_end():
    sent, rest = stream("See [1] and {2} for details.", list("See [1] and {2} for details."))
    assert sent == "See [1] and {2} for details."
    assert rest.content is None


def test_text_before_a_call_streams_and_the_call_waits():
    text = 'Checking now. [get_weather(city="Paris")]'
    streamer = ToolCallStreamer(NAMES)
    assert "".join(streamer.feed(char) for char in text) == "Checking now."
    rest = streamer.finish()
    assert rest.content is None
    assert [call.name for call in rest.calls] == ["get_weather"]
