"""The issue's acceptance run: the official openai client against `vlmserve serve` on loopback, with an image
server on 127.0.0.1 that only `--allow-private-image-urls` lets the server fetch."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import openai
import pytest

from tests.helpers import data_url, png_bytes, png_data_url
from tests.server.helpers import MODEL, LiveServer, image_message
from vlmserve import SamplingParams

PRICES = {"input": 0.35, "output": 0.40, "image": 0.0005058}
SCHEMA = {"type": "object", "properties": {"mood": {"type": "string", "enum": ["calm", "busy", "odd"]}},
          "required": ["mood"], "additionalProperties": False}


PHOTO = png_bytes(size=(48, 32), color=(10, 120, 240))  # what the image server sends


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = PHOTO
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/photo.png"
    server.shutdown()


@pytest.fixture(scope="module")
def client(demo_model_dir):
    live = LiveServer(demo_model_dir, "--allow-private-image-urls")
    yield openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    live.stop()


def ask(client, messages, **options):
    return client.chat.completions.create(model=MODEL, messages=messages, **options)


def test_greedy_answer_over_http_equals_llm_chat(client, demo_llm, image_url):
    messages = [image_message("What is in this picture?", image_url)]
    http = ask(client, messages, temperature=0, max_tokens=12, extra_body={"ignore_eos": True})
    local = [image_message("What is in this picture?", data_url(PHOTO))]
    expected = demo_llm.chat(local, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    assert http.choices[0].message.content == expected[0].outputs[0].text
    assert http.usage.prompt_tokens == len(expected[0].prompt_token_ids) and http.usage.num_images == 1


def test_text_only_chat_and_cost_follow_the_price_table(client):
    answer = ask(client, [{"role": "user", "content": "Hello!"}], temperature=0, max_tokens=5,
                 extra_body={"ignore_eos": True})
    usage = answer.usage
    assert usage.completion_tokens == 5 and usage.num_images == 0
    assert usage.total_tokens == usage.prompt_tokens + 5
    assert usage.cost == pytest.approx((usage.prompt_tokens * PRICES["input"] + 5 * PRICES["output"]) / 1e6)
    with_image = ask(client, [image_message("Hi", png_data_url())], max_tokens=2, extra_body={"ignore_eos": True})
    u = with_image.usage
    assert u.cost == pytest.approx((u.prompt_tokens * PRICES["input"] + 2 * PRICES["output"]) / 1e6 + PRICES["image"])


def test_stream_with_usage_n2_logprobs_stop_and_seed(client):
    messages = [{"role": "user", "content": "Write a list."}]
    chunks = list(ask(client, messages, max_tokens=6, temperature=0, stream=True,
                      stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].choices == []
    two = ask(client, messages, n=2, max_tokens=4, seed=3, logprobs=True, top_logprobs=2,
              extra_body={"ignore_eos": True})
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 8
    for choice in two.choices:
        assert len(choice.logprobs.content) == 4
        assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in choice.logprobs.content)
    again = ask(client, messages, n=2, max_tokens=4, seed=3, extra_body={"ignore_eos": True})
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]
    free = ask(client, messages, temperature=0, max_tokens=12, extra_body={"ignore_eos": True})
    text = free.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    stopped = ask(client, messages, temperature=0, max_tokens=12, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == text[: text.index(stop)]


def test_json_schema_output_validates(client):
    # room for the random-weight model to pad each of the object's gaps with the most whitespace allowed
    answer = ask(client, [{"role": "user", "content": "How do you feel?"}], max_tokens=200, temperature=0,
                 response_format={"type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}}

# Not strict, so the answer is free text: under ignore_eos a strict tool's "text or a call" grammar ends at once.
LOOSE_WEATHER_TOOL = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": False}}


def test_tool_round_trip_with_the_openai_client(client):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = ask(client, messages, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=40)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    streamed = list(ask(client, messages, tools=[WEATHER_TOOL], tool_choice="required", temperature=0,
                        max_tokens=40, stream=True))
    pieces = [d for chunk in streamed for d in (chunk.choices[0].delta.tool_calls or [])]
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    assert "".join(p.function.arguments or "" for p in pieces) == call.function.arguments
    named = ask(client, messages, tools=[LOOSE_WEATHER_TOOL], temperature=0, max_tokens=40,
                tool_choice={"type": "function", "function": {"name": "get_weather"}}).choices[0]
    assert named.finish_reason == "tool_calls" and named.message.tool_calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(named.message.tool_calls[0].function.arguments),
                        WEATHER_TOOL["function"]["parameters"])
    answer = ask(client, [*messages, choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}],
                 tools=[LOOSE_WEATHER_TOOL], temperature=0, max_tokens=4, extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 4
