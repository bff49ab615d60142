"""Llama 4 served by `vlmserve serve` through the same server code as Llama 3.2 Vision: the official openai client
streams a chat with an image, and the text equals the offline engine's greedy answer; its pythonic tool calls are
enforced by the grammar, so even random weights call a declared tool with arguments that match."""

import json

import jsonschema
import openai
import pytest

from tests.helpers import noise_png_data_url
from tests.server.helpers import MODEL, LiveServer, image_message
from vlmserve import LLM, SamplingParams

MAX_TOKENS = 10
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 3},
                                            "metric": {"type": "boolean"}},
           "required": ["city"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture(scope="module")
def server(served_llama4):
    live = LiveServer(served_llama4.path, "--num-kv-blocks", "320")  # room for the tools prompt (~3400 tokens)
    yield live
    live.stop()


def test_streamed_chat_with_an_image_equals_offline_greedy(server, served_llama4):
    messages = [image_message("What is in this picture?", noise_png_data_url(45))]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage

    llm = LLM(served_llama4.path, dtype="float32", device="cpu", num_kv_blocks=128)
    offline = llm.chat(messages, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
                       use_tqdm=False)[0]
    assert streamed == offline.outputs[0].text
    assert usage.completion_tokens == MAX_TOKENS
    assert usage.prompt_tokens == len(offline.prompt_token_ids)
    assert usage.num_images == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1


def test_models_list_and_field_checks_are_the_shared_server_code(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"no_such_field": 1})


def test_required_and_named_tool_calls_round_trip_streamed_and_not(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_time"}}
    for choice, allowed in (("required", set(SCHEMAS)), (named, {"get_time"})):
        options = {"model": MODEL, "messages": messages, "tools": TOOLS, "tool_choice": choice, "temperature": 0,
                   "max_tokens": 60}
        answer = client.chat.completions.create(**options).choices[0]
        assert answer.finish_reason == "tool_calls" and answer.message.content is None
        for call in answer.message.tool_calls:
            assert call.function.name in allowed
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        pieces = [d for chunk in client.chat.completions.create(**options, stream=True) if chunk.choices
                  for d in chunk.choices[0].delta.tool_calls or []]
        streamed = {}
        for piece in pieces:
            streamed.setdefault(piece.index, [None, ""])
            streamed[piece.index][0] = piece.function.name or streamed[piece.index][0]
            streamed[piece.index][1] += piece.function.arguments or ""
        assert list(streamed.values()) == [[c.function.name, c.function.arguments] for c in answer.message.tool_calls]
    reply = client.chat.completions.create(
        model=MODEL, tools=TOOLS, temperature=0, max_tokens=4, extra_body={"ignore_eos": True},
        messages=[*messages, answer.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": answer.message.tool_calls[0].id, "content": "12:00"}])
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
