"""POST /v1/chat/completions on the tiny demo model: images, streaming, usage and cost, n, logprobs,
continued assistant messages."""

import json

import pytest

from tests.helpers import png_data_url
from tests.server.helpers import MODEL, image_message
from vlmserve.server.pricing import Price

GREEDY = {"model": MODEL, "temperature": 0, "max_tokens": 6, "ignore_eos": True}


def sse_events(text: str) -> list:
    """The JSON chunks of an SSE body; asserts it ends with [DONE]."""
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_chat_with_two_images_counts_them_and_prices_them(serve):
    body = {**GREEDY, "messages": [image_message("Compare these.", png_data_url(), png_data_url(color=(0, 0, 255)))]}

    async def run(client):
        return (await client.post("/v1/chat/completions", json=body)).json()

    out = serve(run)
    assert out["object"] == "chat.completion" and out["model"] == MODEL
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    usage = out["usage"]
    assert usage["num_images"] == 2 and usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    price = Price()
    expected = (usage["prompt_tokens"] * 0.35 + 6 * 0.40) / 1e6 + 2 * 0.0005058
    assert usage["cost"] == pytest.approx(expected, rel=1e-9)
    assert usage["cost"] == price.cost(usage["prompt_tokens"], 6, 2)


def test_stream_deltas_join_to_the_greedy_answer(serve):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]

    async def run(client):
        whole = (await client.post("/v1/chat/completions", json={**GREEDY, "messages": messages})).json()
        stream = await client.post("/v1/chat/completions", json={
            **GREEDY, "messages": messages, "stream": True, "stream_options": {"include_usage": True}})
        return whole, stream

    whole, stream = serve(run)
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(stream.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0] for c in chunks[1:-2]]
    assert all(set(choice["delta"]) == {"content"} and choice["finish_reason"] is None for choice in content)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-2]["choices"][0]["delta"] == {}
    assert "".join(choice["delta"]["content"] for choice in content) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_n2_returns_two_choices_and_sums_their_tokens(serve):
    body = {"model": MODEL, "n": 2, "max_tokens": 4, "seed": 7, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Pick a word."}]}

    async def run(client):
        return (await client.post("/v1/chat/completions", json=body)).json()

    out = serve(run)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["usage"]["completion_tokens"] == 8


def test_logprobs_have_openai_shape(serve):
    body = {**GREEDY, "logprobs": True, "top_logprobs": 3, "messages": [{"role": "user", "content": "Hi"}]}

    async def run(client):
        return (await client.post("/v1/chat/completions", json=body)).json()

    content = serve(run)["choices"][0]["logprobs"]["content"]
    assert len(content) == 6
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])  # greedy: the best token
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][-1]["logprob"]


def test_final_assistant_message_is_continued(serve):
    messages = [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two,"}]

    async def run(client):
        auto = (await client.post("/v1/chat/completions", json={**GREEDY, "messages": messages})).json()
        explicit = (await client.post("/v1/chat/completions", json={
            **GREEDY, "messages": messages, "continue_final_message": True, "add_generation_prompt": False})).json()
        tokenized = {}
        for name, options in {"continued": {"continue_final_message": True, "add_generation_prompt": False},
                              "new turn": {"add_generation_prompt": True}}.items():
            tokenized[name] = (await client.post("/tokenize", json={"messages": messages, **options})).json()
        return auto, explicit, tokenized

    auto, explicit, tokenized = serve(run)
    assert auto["choices"][0]["message"] == explicit["choices"][0]["message"]
    assert auto["usage"]["prompt_tokens"] == tokenized["continued"]["count"]
    assert tokenized["new turn"]["count"] > tokenized["continued"]["count"]


def test_stop_string_ends_the_answer(serve):
    async def run(client):
        whole = (await client.post("/v1/chat/completions", json={
            **GREEDY, "messages": [{"role": "user", "content": "Hi"}]})).json()
        text = whole["choices"][0]["message"]["content"]
        stop = text[len(text) // 2:][:3]
        cut = (await client.post("/v1/chat/completions", json={
            **GREEDY, "stop": [stop], "messages": [{"role": "user", "content": "Hi"}]})).json()
        return text, stop, cut

    text, stop, cut = serve(run)
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == text[:text.index(stop)]


def test_detail_low_is_one_tile_and_usage_says_so(serve, demo_llm):
    wide = png_data_url(size=(224, 56))  # four tiles across at the demo model's 56-pixel tiles

    def ask(detail: str | None) -> dict:
        image_url = {"url": wide} if detail is None else {"url": wide, "detail": detail}
        return {**GREEDY, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": image_url}, {"type": "text", "text": "What is it?"}]}]}

    async def run(client):
        return [(await client.post("/v1/chat/completions", json=ask(detail))).json()["usage"]
                for detail in (None, "high", "low")]

    default, high, low = serve(run)
    assert default["num_image_tiles"] == high["num_image_tiles"] == 4 and low["num_image_tiles"] == 1
    assert low["prompt_tokens"] == high["prompt_tokens"]  # Llama 3.2: one <|image|> token whatever the tiles
    prepared = [demo_llm.engine.process_chat(ask(detail)["messages"]) for detail in ("high", "low")]
    hashes = [p.multimodal.content_hashes for p in prepared]
    assert hashes[0] != hashes[1]  # the one-tile encoding is cached apart from the full one


def test_priority_is_refused_by_name_when_the_server_schedules_first_come_first_served(serve):
    async def run(client):
        body = {**GREEDY, "messages": [{"role": "user", "content": "Hi"}]}
        return [await client.post("/v1/chat/completions", json={**body, "priority": priority}) for priority in (0, 3)]

    default, urgent = serve(run)
    assert default.status_code == 200
    assert urgent.status_code == 400 and urgent.json()["error"]["param"] == "priority"
    assert "--scheduling-policy priority" in urgent.json()["error"]["message"]
