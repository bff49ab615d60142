"""Client errors come back OpenAI-shaped with the right status: 400, 401, 404, 413, 429."""

import asyncio
import base64
import os

import pytest

from tests.helpers import noise_png_data_url, png_data_url
from tests.server.helpers import MODEL, engine_config, image_message
from vlmserve.engine.llm_engine import LLMEngine, build_engine

HI = [{"role": "user", "content": "Hi"}]
ASK = {"model": MODEL, "max_tokens": 2, "messages": HI}


@pytest.fixture(scope="module")
def engine(demo_model_dir) -> LLMEngine:
    """One running sequence at a time, so that a queue limit is easy to reach."""
    return build_engine(engine_config(demo_model_dir, max_num_seqs=1))


def post_chat(serve, bodies: list[dict], **config) -> list:
    async def run(client):
        return [await client.post("/v1/chat/completions", json=body) for body in bodies]
    return serve(run, **config)


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("extra, param", [
    ({"temperature": 3}, "temperature"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools.0.function.parameters"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"logit_bias": {"50": 5}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": 20000}, "max_tokens"),
    ({"max_tokens": 4000}, "max_tokens"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
    ({"messages": [{"role": "developer", "content": "x"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name"),
])
def test_bad_requests_are_400_naming_the_field(serve, extra, param):
    [response] = post_chat(serve, [{**ASK, **extra}])
    error = assert_error(response, 400, param)
    assert error["type"] == "invalid_request_error"


def test_harmless_metadata_is_accepted(serve):
    extras = {"user": "u1", "store": False, "metadata": {"k": "v"}, "service_tier": "auto",
              "parallel_tool_calls": True, "logit_bias": {}, "tools": [], "modalities": ["text"],
              "prompt_cache_key": "k", "prompt_cache_retention": "24h", "safety_identifier": "s", "verbosity": "low",
              "stream": True, "stream_options": {"include_usage": True, "include_obfuscation": False}}
    [response] = post_chat(serve, [{**ASK, **extras}])
    assert response.status_code == 200, response.text


def test_malformed_json_and_unknown_routes(serve):
    async def run(client):
        return (await client.post("/v1/chat/completions", content=b'{"messages": [',
                                  headers={"Content-Type": "application/json"}),
                await client.get("/v1/chat/completions"), await client.get("/v1/nowhere"))

    malformed, wrong_method, unknown = serve(run)
    assert "not valid JSON" in assert_error(malformed, 400)["message"]
    assert_error(wrong_method, 405)
    assert_error(unknown, 404)


def test_unknown_model_is_404(serve):
    async def run(client):
        return (await client.post("/v1/chat/completions", json={**ASK, "model": "gpt-4o"}),
                await client.post("/v1/completions", json={"model": "gpt-4o", "prompt": "x"}))

    for response in serve(run):
        assert assert_error(response, 404, "model")["type"] == "not_found_error"


def test_bad_images(serve, tmp_path):
    garbage = "data:image/png;base64," + base64.b64encode(os.urandom(64)).decode()
    local = tmp_path / "secret.png"
    local.write_bytes(base64.b64decode(png_data_url().split(",")[1]))
    responses = post_chat(serve, [
        {**ASK, "messages": [image_message("x", garbage)]},
        {**ASK, "messages": [image_message("x", str(local))]},
        {**ASK, "messages": [image_message("x", local.as_uri())]},
        {**ASK, "messages": [image_message("x", "data:text/plain;base64,aGk=")]},
        {**ASK, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": png_data_url(), "detail": "tiny"}}]}]},
    ])
    assert "not a recognised image" in assert_error(responses[0], 400)["message"]
    assert_error(responses[1], 400, "messages.0.content.0.image_url.url")
    assert_error(responses[2], 400, "messages.0.content.0.image_url.url")
    assert_error(responses[3], 400)
    assert_error(responses[4], 400, "messages.0.content.0.image_url.detail")


def test_too_many_and_too_large_images_are_413(serve):
    noise = noise_png_data_url(64)
    responses = post_chat(serve, [{**ASK, "messages": [image_message("x", png_data_url(), png_data_url())]},
                                  {**ASK, "messages": [image_message("x", noise)]}],
                          max_images_per_request=1, max_image_bytes=2000)
    assert assert_error(responses[0], 413, "messages")["type"] == "request_too_large"
    assert_error(responses[1], 413, "messages.0.content.0.image_url.url")

    huge = [{"role": "user", "content": "x" * (3 << 20)}]
    [response] = post_chat(serve, [{**ASK, "messages": huge}], max_images_per_request=0)
    assert_error(response, 413)


def test_api_keys_guard_everything_but_health(serve):
    async def run(client):
        bearer = {"Authorization": "Bearer s3cret"}
        return {
            "none": await client.post("/v1/chat/completions", json=ASK),
            "wrong": await client.post("/v1/chat/completions", json=ASK, headers={"Authorization": "Bearer nope"}),
            "right": await client.post("/v1/chat/completions", json=ASK, headers=bearer),
            "other key": await client.get("/v1/models", headers={"Authorization": "Bearer another"}),
            "metrics": await client.get("/metrics"),
            "tokenize": await client.post("/tokenize", json={"prompt": "x"}),
            "health": await client.get("/health"),
            "metrics with key": (await client.get("/metrics", headers=bearer)).text,
        }

    out = serve(run, api_keys=("s3cret", "another"))
    for name in ("none", "wrong", "metrics", "tokenize"):
        assert assert_error(out[name], 401)["type"] == "authentication_error"
        assert out[name].headers["WWW-Authenticate"] == "Bearer"
    assert out["right"].status_code == 200 and out["other key"].status_code == 200
    assert out["health"].status_code == 200
    assert "s3cret" not in out["metrics with key"] and 'vlmserve_cost_usd_total{api_key="sha256:' in out[
        "metrics with key"]


def test_full_queue_is_429_with_retry_after(serve):
    long = {**ASK, "max_tokens": 1500, "ignore_eos": True}

    async def run(client):
        running = asyncio.create_task(client.post("/v1/chat/completions", json=long))
        while "vlmserve_num_requests_running 1.0" not in (await client.get("/metrics")).text:
            await asyncio.sleep(0.05)
        refused = await client.post("/v1/chat/completions", json=ASK)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return refused

    refused = serve(run, max_queue=0)
    assert assert_error(refused, 429)["type"] == "rate_limit_error"
    assert refused.headers["Retry-After"] == "1"
