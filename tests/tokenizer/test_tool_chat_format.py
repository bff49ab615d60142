"""Tools in both chat formats: definitions offered where each family's format puts them, calls in the history
written the way each model writes them, tool results under the ipython role, and the refusals."""

import json

import pytest

from tests.tokenizer.helpers import image_url, text, user
from vlmserve.tokenizer.chat_format import TOOLS_INSTRUCTION, ChatFormatError, render_chat
from vlmserve.tokenizer.llama4_chat_format import TOOLS_INSTRUCTION as LLAMA4_TOOLS_INSTRUCTION
from vlmserve.tokenizer.llama4_chat_format import render_llama4_chat
from vlmserve.tool_calls.types import Tool

DATE = "26 Jul 2024"
WEATHER = Tool("get_weather", "Weather in a city",
               {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
SECOND_CALL = {"id": "call_2", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Kyōto", "days": [1, true]}'}}
ROUND_TRIP = [user("Weather in Paris?"), {"role": "assistant", "content": None, "tool_calls": [CALL]},
              {"role": "tool", "tool_call_id": "call_1", "content": "18 C, \"sunny\""}]


def test_llama32_offers_tools_in_the_first_user_message():
    rendered = render_chat([user("Weather in Paris?")], tools=[WEATHER], date_string=DATE)
    definition = json.dumps({"type": "function", "function": WEATHER.definition()}, indent=4)
    assert rendered.prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {DATE}\n\n<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{TOOLS_INSTRUCTION}{definition}\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert TOOLS_INSTRUCTION.startswith("Given the following functions, please respond with a JSON")


def test_llama32_writes_calls_as_json_and_results_under_ipython():
    rendered = render_chat(ROUND_TRIP, tools=[WEATHER], date_string=DATE)
    assert rendered.prompt.endswith(
        "Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"18 C, \\"sunny\\""<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama32_joins_parallel_calls_in_history():
    messages = [user("Both?"), {"role": "assistant", "content": "", "tool_calls": [CALL, SECOND_CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18"},
                {"role": "tool", "tool_call_id": "call_2", "content": [text("12")]}]
    prompt = render_chat(messages, tools=[WEATHER], date_string=DATE).prompt
    assert ('{"name": "get_weather", "parameters": {"city": "Paris"}}; '
            '{"name": "get_weather", "parameters": {"city": "Kyōto", "days": [1, true]}}<|eot_id|>') in prompt
    assert prompt.count("<|start_header_id|>ipython<|end_header_id|>\n\n") == 2
    assert '\n\n"12"<|eot_id|>' in prompt


def test_llama32_refuses_tools_with_images():
    with pytest.raises(ChatFormatError, match="cannot call tools with an image"):
        render_chat([user(image_url("data:image/png;base64,AA"), text("What?"))], tools=[WEATHER])
    render_chat([user(image_url("data:image/png;base64,AA"), text("What?"))], tools=None)


def test_llama4_offers_tools_in_the_system_block():
    definitions = json.dumps([WEATHER.definition()], indent=4)
    plain = render_llama4_chat([user("Weather in Paris?")], tools=[WEATHER])
    assert plain.prompt == (
        f"<|begin_of_text|><|header_start|>system<|header_end|>\n\n{LLAMA4_TOOLS_INSTRUCTION}{definitions}<|eot|>"
        "<|header_start|>user<|header_end|>\n\nWeather in Paris?<|eot|><|header_start|>assistant<|header_end|>\n\n")
    with_system = render_llama4_chat([{"role": "system", "content": " Be brief. "}, user("Hi")], tools=[WEATHER])
    assert with_system.prompt.startswith(
        f"<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.\n\n{LLAMA4_TOOLS_INSTRUCTION}")


def test_llama4_writes_calls_pythonic_and_takes_images_with_tools():
    messages = [user(image_url("data:image/png;base64,AA"), text("Both?")),
                {"role": "assistant", "content": None, "tool_calls": [CALL, SECOND_CALL]},
                {"role": "tool", "tool_call_id": "call_2", "content": "12"}]
    rendered = render_llama4_chat(messages, tools=[WEATHER])
    assert rendered.images == ["data:image/png;base64,AA"]
    assert rendered.prompt.endswith(
        '<|header_start|>assistant<|header_end|>\n\n[get_weather(city="Paris"), '
        'get_weather(city="Kyōto", days=[1, True])]<|eot|><|header_start|>ipython<|header_end|>\n\n"12"<|eot|>'
        "<|header_start|>assistant<|header_end|>\n\n")


@pytest.mark.parametrize("render", [render_chat, render_llama4_chat])
@pytest.mark.parametrize("messages, options, message", [
    ([user("Hi"), {"role": "tool", "tool_call_id": "call_9", "content": "x"}], {},
     r"messages\[1\] is a tool message whose tool_call_id 'call_9' answers no tool call"),
    ([user("Hi"), {"role": "assistant", "tool_calls": [CALL]}, user("?"),
      {"role": "tool", "tool_call_id": "call_1", "content": "x"}], {}, r"messages\[3\] is a tool message"),
    ([user("Hi"), {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]}],
     {}, r"messages\[1\].tool_calls\[0\].function.arguments must be a JSON object"),
    ([user("Hi"), {"role": "assistant", "tool_calls": [{"id": "x"}]}], {}, r"tool_calls\[0\] needs a function"),
    ([{"role": "user", "content": "Hi", "tool_calls": [CALL]}], {}, "only assistant messages make tool calls"),
    ([user("Hi"), {"role": "assistant", "tool_calls": [CALL]}],
     {"continue_final_message": True, "add_generation_prompt": False}, "cannot continue an assistant message"),
    ([user("Hi"), {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_1",
                                                                 "content": [image_url("data:,")]}],
     {}, "its content must be text"),
])
def test_tool_message_errors(render, messages, options, message):
    with pytest.raises(ChatFormatError, match=message):
        render(messages, **options)
