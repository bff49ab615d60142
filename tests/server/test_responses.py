"""/v1/responses in process on the tiny Llama 3.2 Vision checkpoint: answers equal the chat path's, streams send
OpenAI's event sequence, tools are enforced, stored responses continue a conversation, errors name the field."""

import json

import jsonschema

from tests.helpers import png_data_url
from tests.server.helpers import MODEL
from tests.server.test_tools import PARAMETERS
from vlmserve.server import response_store
from vlmserve.server.response_store import ResponseStore

GREEDY = {"model": MODEL, "temperature": 0, "max_output_tokens": 6}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": PARAMETERS}


def post_all(serve, requests: list[tuple[str, dict]], **config) -> list:
    async def run(client):
        return [await client.post(path, json=body) for path, body in requests]
    return serve(run, **config)


def events(response) -> list[dict]:
    """The stream's events, each checked to carry its `event:` name as its type."""
    found = []
    for block in response.text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        found.append(json.loads(data[6:]))
        assert found[-1]["type"] == name[7:]
    return found


def test_text_and_image_input_answer_as_chat_does(serve):
    image = png_data_url()
    response, chat = post_all(serve, [
        ("/v1/responses", {**GREEDY, "instructions": "Be brief.", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                         {"type": "input_image", "image_url": image, "detail": "auto"}]}]}),
        ("/v1/chat/completions", {"model": MODEL, "temperature": 0, "max_tokens": 6, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": image}}]}]})])
    assert response.status_code == 200, response.text
    body, chat = response.json(), chat.json()
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["instructions"] == "Be brief."
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["text"] == chat["choices"][0]["message"]["content"]
    usage, chat_usage = body["usage"], chat["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["num_images"], usage["cost"]) == (
        chat_usage["prompt_tokens"], chat_usage["completion_tokens"], 1, chat_usage["cost"])
    assert body["status"] == ("incomplete" if chat["choices"][0]["finish_reason"] == "length" else "completed")


def test_the_stream_sends_the_event_sequence_and_the_same_answer(serve):
    ask = {**GREEDY, "input": "Tell me a story", "max_output_tokens": 8}
    whole, streamed = post_all(serve, [("/v1/responses", ask), ("/v1/responses", {**ask, "stream": True})])
    found = events(streamed)
    kinds = [event["type"] for event in found]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [event["sequence_number"] for event in found] == list(range(len(found)))
    text = "".join(event["delta"] for event in found if event["type"] == "response.output_text.delta")
    final = found[-1]["response"]
    assert text == final["output"][0]["content"][0]["text"] == whole.json()["output"][0]["content"][0]["text"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 8


def test_required_tools_give_function_calls_streamed_and_not(serve):
    ask = {**GREEDY, "max_output_tokens": 60, "input": "Weather in Paris?", "tools": [WEATHER],
           "tool_choice": "required"}
    whole, streamed = post_all(serve, [("/v1/responses", ask), ("/v1/responses", {**ask, "stream": True})])
    [call] = whole.json()["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["call_id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), PARAMETERS)
    found = events(streamed)
    arguments = [event for event in found if event["type"] == "response.function_call_arguments.delta"]
    assert "".join(event["delta"] for event in arguments) == call["arguments"]
    assert found[-1]["type"] == "response.completed"
    assert found[-1]["response"]["output"][0]["arguments"] == call["arguments"]


def test_function_call_items_are_the_chat_messages_they_stand_for(serve):
    """The same conversation as Responses items and as chat messages gives the same prompt and greedy answer."""
    turns = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "18 C"}]
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    chat_tool = {"type": "function", "function": {key: WEATHER[key] for key in ("name", "description", "parameters")}}
    response, chat = post_all(serve, [
        ("/v1/responses", {**GREEDY, "input": turns, "tools": [WEATHER], "tool_choice": "none"}),
        ("/v1/chat/completions", {"model": MODEL, "temperature": 0, "max_tokens": 6, "messages": messages,
                                  "tools": [chat_tool], "tool_choice": "none"})])
    assert response.status_code == 200, response.text
    body, chat = response.json(), chat.json()
    assert body["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]
    assert body["output"][0]["content"][0]["text"] == chat["choices"][0]["message"]["content"]


def test_stored_responses_continue_retrieve_and_delete(serve, tmp_path):
    async def run(client):
        first = (await client.post("/v1/responses", json={**GREEDY, "input": "My name is Ada."})).json()
        follow = {**GREEDY, "input": "What is my name?", "previous_response_id": first["id"]}
        second = (await client.post("/v1/responses", json=follow)).json()
        tokens = (await client.post("/tokenize", json={"messages": [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first["output"][0]["content"][0]["text"]},
            {"role": "user", "content": "What is my name?"}], "add_generation_prompt": True})).json()
        fetched = (await client.get(f"/v1/responses/{first['id']}")).json()
        deleted = await client.delete(f"/v1/responses/{first['id']}")
        gone = await client.post("/v1/responses", json=follow)
        unstored = (await client.post("/v1/responses", json={**GREEDY, "input": "x", "store": False})).json()
        missing = await client.get(f"/v1/responses/{unstored['id']}")
        return first, second, tokens, fetched, deleted, gone, missing
    first, second, tokens, fetched, deleted, gone, missing = serve(run, data_dir=str(tmp_path))
    assert first["store"] is True and second["previous_response_id"] == first["id"]
    assert second["usage"]["input_tokens"] == tokens["count"]  # the stored turn is in the prompt
    assert fetched == first
    assert deleted.json() == {"id": first["id"], "object": "response.deleted", "deleted": True}
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "previous_response_id"
    assert missing.status_code == 404


def test_requests_that_cannot_be_answered_are_refused_naming_the_field(serve):
    image = {"type": "input_image", "image_url": png_data_url(), "detail": "auto"}
    cases = [
        ({**GREEDY, "input": "x", "previous_response_id": "resp_x"}, 404, "previous_response_id", "--data-dir"),
        ({**GREEDY, "input": "x", "tools": [{"type": "web_search"}]}, 400, "tools", "only function tools"),
        ({**GREEDY, "input": [{"role": "developer", "content": [image]}]}, 400, "input.0.content.0",
         "developer message with an image"),
        ({**GREEDY, "input": [{"role": "user", "content": [image]}], "tools": [WEATHER]}, 400, None,
         "cannot call tools with an image"),
        ({**GREEDY, "input": "x", "max_output_tokens": 10**6}, 400, "max_output_tokens", "output limit"),
        ({**GREEDY, "input": "x", "tools": [{**WEATHER, "parameters": {"properties": {"a": {"$ref": "#/x"}}}}],
          "tool_choice": "required"}, 400, "tools", "tools[0].parameters: $ref '#/x' is not supported"),
        ({**GREEDY, "input": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}, 400, None,
         "input[1] is a system message"),
        ({**GREEDY, "input": "x", "truncation": "auto"}, 400, "truncation", ""),
        ({**GREEDY, "input": "x", "reasoning": {"effort": "high"}}, 400, "reasoning", ""),
        ({**GREEDY, "input": [{"role": "user", "content": [{**image, "image_url": "file:///etc/passwd"}]}]}, 400,
         "input.0.content.0.image_url", ""),
    ]
    responses = post_all(serve, [("/v1/responses", body) for body, *_ in cases])
    for response, (_, status, param, message) in zip(responses, cases):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert message in error["message"], error
        if param is not None:
            assert error["param"] == param, error


def test_the_store_keeps_the_newest_within_retention(tmp_path, monkeypatch):
    store = ResponseStore(tmp_path, max_responses=2, max_age_s=100)
    clock = iter(range(1000, 2000, 10))
    monkeypatch.setattr(response_store.time, "time", lambda: next(clock))
    for name in ("a", "b", "c"):
        store.save(name, [{"role": "user", "content": name}], {"id": name})
    assert store.load("a") is None and store.load("c").conversation == [{"role": "user", "content": "c"}]
    assert store.load("b").response == {"id": "b"}
    store.close()
    reopened = ResponseStore(tmp_path, max_responses=2, max_age_s=100)
    monkeypatch.setattr(response_store.time, "time", lambda: 1500)
    assert reopened.load("c") is None  # past retention, though still on disk until the next save
    assert not reopened.delete("a") and reopened.delete("c")
    reopened.close()


def test_input_image_detail_low_is_one_tile(serve):
    wide = png_data_url(size=(224, 56))
    bodies = [{**GREEDY, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": wide, "detail": detail}]}]} for detail in ("low", "original")]
    low, original = post_all(serve, [("/v1/responses", body) for body in bodies])
    assert low.json()["usage"]["num_image_tiles"] == 1 and original.json()["usage"]["num_image_tiles"] == 4
