"""Tool calling on /v1/chat/completions (Llama 3.2 Vision's JSON calls), in process: tool_choice required and
named are enforced by the grammar, so even random weights call a declared tool with arguments that match."""

import json

import jsonschema

from tests.helpers import png_data_url
from tests.server.helpers import MODEL
from vlmserve.server.serving_tools import ToolUse
from vlmserve.tool_calls.types import Tool

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                               "metric": {"type": "boolean"}},
              "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": PARAMETERS}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}]
ASK = {"model": MODEL, "max_tokens": 60, "temperature": 0, "tools": TOOLS,
       "messages": [{"role": "user", "content": "Weather in Paris?"}]}


def post_all(serve, bodies: list[dict]) -> list:
    async def run(client):
        return [await client.post("/v1/chat/completions", json=body) for body in bodies]
    return serve(run)


def stream_events(serve, body: dict) -> list[dict]:
    async def run(client):
        response = await client.post("/v1/chat/completions", json={**body, "stream": True})
        assert response.status_code == 200, response.text
        return [json.loads(line[6:]) for line in response.text.splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"]
    return serve(run)


def check_calls(message: dict, allowed: set[str]) -> list[dict]:
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    assert message["content"] is None
    for call in message["tool_calls"]:
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] in allowed
        jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
    return message["tool_calls"]


def test_required_and_named_choices_give_valid_calls(serve):
    required, named = post_all(serve, [{**ASK, "tool_choice": "required"},
                                       {**ASK, "tool_choice": {"type": "function",
                                                               "function": {"name": "get_time"}}}])
    for response, allowed in ((required, {"get_weather", "get_time"}), (named, {"get_time"})):
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert len(check_calls(choice["message"], allowed)) == 1  # Llama 3.2 writes one call per message


def test_streamed_calls_join_to_the_non_streamed_answer(serve):
    body = {**ASK, "tool_choice": "required"}
    whole = post_all(serve, [body])[0].json()["choices"][0]
    events = stream_events(serve, body)
    deltas = [event["choices"][0] for event in events if event["choices"]]
    calls: dict[int, dict] = {}
    for delta in deltas:
        for call in delta["delta"].get("tool_calls", []):
            entry = calls.setdefault(call["index"], {"name": None, "arguments": ""})
            if "id" in call:
                assert call["type"] == "function" and entry["name"] is None
                entry["name"] = call["function"]["name"]
            entry["arguments"] += call["function"]["arguments"]
    expected = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in whole["message"]["tool_calls"]]
    assert list(calls.values()) == expected
    assert "".join(d["delta"].get("content") or "" for d in deltas) == (whole["message"]["content"] or "")
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_a_tool_round_trip_answers_in_text(serve):
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]
    with_tools, without = post_all(serve, [{**ASK, "messages": messages, "max_tokens": 5},
                                           {**ASK, "messages": messages, "max_tokens": 5, "tool_choice": "none"}])
    assert with_tools.status_code == 200, with_tools.text
    assert without.status_code == 200, without.text
    # tool_choice none leaves the tools out of the prompt (vLLM's --exclude-tools-when-tool-choice-none)
    assert without.json()["usage"]["prompt_tokens"] < with_tools.json()["usage"]["prompt_tokens"]
    assert "tool_calls" not in without.json()["choices"][0]["message"]


def test_tool_requests_that_cannot_be_answered_are_400_naming_the_field(serve):
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()}},
                                         {"type": "text", "text": "What?"}]}
    cases = [
        ({**ASK, "tools": None, "tool_choice": "auto"}, "tool_choice", "only allowed when tools"),
        ({**ASK, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name",
         "not in tools"),
        ({**ASK, "tools": TOOLS + TOOLS[:1]}, "tools", "two functions named 'get_weather'"),
        ({**ASK, "tool_choice": "required", "structured_outputs": {"json_object": True}}, "tools",
         "only one output constraint"),
        ({**ASK, "messages": [image]}, None, "cannot call tools with an image"),
        ({**ASK, "messages": [*ASK["messages"], {"role": "tool", "tool_call_id": "x", "content": "1"}]}, None,
         "answers no tool call"),
        ({**ASK, "tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name", ""),
    ]
    responses = post_all(serve, [body for body, _, _ in cases])
    for response, (_, param, message) in zip(responses, cases):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert message in error["message"], error
        if param is not None:
            assert error["param"] == param, error


def test_parallel_tool_calls_false_keeps_the_first_call():
    text = '[{"name": "get_time", "parameters": {"zone": "UTC"}}, {"name": "get_weather", "parameters": {}}]'
    tools = [Tool(tool["function"]["name"]) for tool in TOOLS]
    single, _ = ToolUse(tools, "auto", parallel=False).message(text, "stop")
    both, finish = ToolUse(tools, "auto", parallel=True).message(text, "stop")
    assert [call.function.name for call in single.tool_calls] == ["get_time"]
    assert [call.function.name for call in both.tool_calls] == ["get_time", "get_weather"]
    assert finish == "tool_calls"


MOOD = {"type": "object", "properties": {"mood": {"enum": ["happy", "sad"]}}, "required": ["mood"],
        "additionalProperties": False}


def test_response_format_shapes_text_answers_and_leaves_calls_alone(serve):
    response_format = {"type": "json_schema", "json_schema": {"name": "mood", "schema": MOOD}}
    strict = [{"type": "function", "function": {**tool["function"], "strict": True}} for tool in TOOLS]
    bodies = [{**ASK, "max_tokens": 80, "response_format": response_format, "seed": seed, "temperature": 1,
               "tools": strict} for seed in range(4)] + [
        {**ASK, "tool_choice": "required", "response_format": response_format}]
    *auto, required = post_all(serve, bodies)
    for response in auto:
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "tool_calls"), choice
        if choice["finish_reason"] == "tool_calls":
            check_calls(choice["message"], {"get_weather", "get_time"})
        else:
            jsonschema.validate(json.loads(choice["message"]["content"]), MOOD)
    assert required.status_code == 200, required.text
    check_calls(required.json()["choices"][0]["message"], {"get_weather", "get_time"})
