"""`vlmserve serve` as users run it: the official openai client against a live server on loopback, client
disconnects aborting their requests, and SIGTERM draining the requests in flight before exiting 0."""

import os
import signal
import threading

import httpx
import openai
import pytest

from tests.helpers import png_data_url
from tests.server.helpers import MODEL, LiveServer, image_message, metric, wait_for

KEY = "live-key"


@pytest.fixture(scope="module")
def server(demo_model_dir):
    live = LiveServer(demo_model_dir, "--api-key", KEY)
    yield live
    live.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def running(server) -> float:
    return metric(server, "vlmserve_num_requests_running ", KEY)


def test_openai_client_chat_with_image(client):
    answer = client.chat.completions.create(
        model=MODEL, messages=[image_message("What is this?", png_data_url())], max_tokens=4, temperature=0,
        extra_body={"ignore_eos": True, "top_k": 5})
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 4 and answer.usage.num_images == 1 and answer.usage.cost > 0
    assert [m.id for m in client.models.list()] == [MODEL]


def test_openai_client_stream_equals_whole_answer(client):
    request = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=8,
                   temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**request).choices[0].message.content
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens == 8
    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0)
    assert completion.usage.completion_tokens <= 3


def test_openai_client_sees_typed_errors(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       tools=[{"type": "web_search"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_the_request(server, stream):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 1900,
            "ignore_eos": True, "stream": stream}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=httpx.Timeout(60, read=1.0)) as http:
        if stream:
            with http.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers) as response:
                lines = response.iter_lines()  # held: a dropped iterator closes the connection
                assert next(lines).startswith("data: ")
                assert running(server) == 1
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
    wait_for(lambda: running(server) == 0, timeout_s=5)


def test_sigterm_drains_in_flight_requests_then_exits_0(demo_model_dir):
    os.environ["VLMSERVE_API_KEY"] = KEY
    try:
        live = LiveServer(demo_model_dir)
    finally:
        del os.environ["VLMSERVE_API_KEY"]
    results = {}

    def long_request():
        results["response"] = httpx.post(f"{live.url}/v1/chat/completions", timeout=120, headers={
            "Authorization": f"Bearer {KEY}"}, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                   "max_tokens": 300, "ignore_eos": True})

    try:
        thread = threading.Thread(target=long_request)
        thread.start()
        wait_for(lambda: running(live) == 1)
        assert live.terminate() == 0
        thread.join(10)
    finally:
        live.stop()
    response = results["response"]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 300
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_private_image_urls_are_refused_without_the_flag(client):
    for url in ("http://127.0.0.1:9/cat.png", "http://localhost/cat.png", "http://169.254.169.254/latest"):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=MODEL, messages=[image_message("x", url)], max_tokens=2)
        assert refused.value.status_code == 400 and "refused" in refused.value.body["message"]


def test_sigterm_turns_ready_to_503_and_keeps_serving_through_the_drain_grace(demo_model_dir):
    live = LiveServer(demo_model_dir, "--drain-grace", "3")
    try:
        assert httpx.get(f"{live.url}/ready").json() == {"status": "ready"}
        live.process.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{live.url}/ready").status_code == 503)
        assert httpx.get(f"{live.url}/ready").json() == {"status": "draining"}
        assert httpx.get(f"{live.url}/health").status_code == 200  # alive: only new routing should stop
        answer = httpx.post(f"{live.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert answer.status_code == 200
        assert live.process.wait(30) == 0
    finally:
        live.stop()
