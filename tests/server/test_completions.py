"""POST /v1/completions: raw text and token-id prompts, streaming, logprobs."""

import json

from tests.server.helpers import MODEL

GREEDY = {"model": MODEL, "temperature": 0, "max_tokens": 5, "ignore_eos": True}


def test_token_ids_and_the_same_text_give_the_same_completion(serve):
    async def run(client):
        ids = (await client.post("/tokenize", json={"prompt": "The capital of France is"})).json()["tokens"]
        by_text = (await client.post("/v1/completions", json={**GREEDY, "prompt": "The capital of France is"})).json()
        by_ids = (await client.post("/v1/completions", json={**GREEDY, "prompt": ids})).json()
        return ids, by_text, by_ids

    ids, by_text, by_ids = serve(run)
    assert by_ids["object"] == "text_completion"
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_ids["usage"]["prompt_tokens"] == len(ids) == by_text["usage"]["prompt_tokens"]
    assert by_ids["usage"]["completion_tokens"] == 5 and by_ids["choices"][0]["finish_reason"] == "length"


def test_stream_with_logprobs_matches_the_whole_answer(serve):
    body = {**GREEDY, "prompt": "Once upon a time", "logprobs": 2}

    async def run(client):
        whole = (await client.post("/v1/completions", json=body)).json()
        stream = await client.post("/v1/completions", json={**body, "stream": True,
                                                             "stream_options": {"include_usage": True}})
        return whole, stream.text

    whole, text = serve(run)
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(c["text"] for c in choices) == whole["choices"][0]["text"]
    assert choices[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == whole["usage"]
    logprobs = whole["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 5
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0 and logprobs["text_offset"] == sorted(logprobs["text_offset"])
    streamed = [t for c in choices if c["logprobs"] for t in c["logprobs"]["tokens"]]
    assert streamed == logprobs["tokens"]
    assert [o for c in choices if c["logprobs"] for o in c["logprobs"]["text_offset"]] == logprobs["text_offset"]


def test_completion_refuses_echo_and_suffix(serve):
    async def run(client):
        return [await client.post("/v1/completions", json={**GREEDY, "prompt": "x", **extra})
                for extra in ({"echo": True}, {"suffix": "end"}, {"best_of": 3})]

    responses = serve(run)
    assert [r.status_code for r in responses] == [400, 400, 400]
    assert [r.json()["error"]["param"] for r in responses] == ["echo", "suffix", "best_of"]
