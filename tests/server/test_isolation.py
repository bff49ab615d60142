"""One request's failure stays its own: a request whose sampling raises inside the engine fails alone while the
others finish, a server error is logged once, grammars compile off the engine's thread, and a request is
admitted for all n of its sequences."""

import asyncio
import json
import logging
import threading

import pytest

from tests.server.helpers import MODEL, engine_config
from vlmserve.engine.llm_engine import LLMEngine, build_engine
from vlmserve.engine.sampler import Sampler
from vlmserve.server.engine_client import EngineClient

POISON = 1.2345  # the temperature of a request whose sampling raises at once
LATE_POISON = 1.5432  # ... and of one whose sampling raises from its fourth token on
HI = [{"role": "user", "content": "Hi"}]
ASK = {"model": MODEL, "max_tokens": 6, "ignore_eos": True, "messages": HI}


@pytest.fixture(scope="module")
def engine(demo_model_dir) -> LLMEngine:
    return build_engine(engine_config(demo_model_dir, max_num_seqs=4))


@pytest.fixture
def poisoned_sampler(monkeypatch):
    """Sampling raises for any batch holding a poisoned row, as a bug in one row's values would."""
    forward, late_rows_sampled = Sampler.forward, [0]

    def failing(self, logits, metadata):
        late = int((metadata.temperature == LATE_POISON).sum())
        if (metadata.temperature == POISON).any() or (late and late_rows_sampled[0] >= 3):
            raise RuntimeError("injected sampling fault")
        late_rows_sampled[0] += late
        return forward(self, logits, metadata)

    monkeypatch.setattr(Sampler, "forward", failing)


def sse_data(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]


def test_a_request_whose_sampling_raises_fails_alone(serve, poisoned_sampler, caplog):
    async def run(client):
        healthy = [client.post("/v1/chat/completions", json={**ASK, "temperature": t}) for t in (0, 0.7)]
        poisoned = client.post("/v1/chat/completions", json={**ASK, "temperature": POISON, "n": 2})
        late = client.post("/v1/chat/completions", json={**ASK, "temperature": LATE_POISON, "stream": True})
        responses = await asyncio.gather(*healthy, poisoned, late)
        after = await client.post("/v1/chat/completions", json={**ASK, "temperature": 0})
        return responses, after, (await client.get("/health")).status_code, (await client.get("/metrics")).text

    with caplog.at_level(logging.WARNING):
        (*healthy, poisoned, late), after, health, metrics = serve(run)
    for response in healthy + [after]:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 6
    assert poisoned.status_code == 500 and poisoned.json()["error"]["type"] == "server_error"
    assert "injected" not in poisoned.text  # no internals to the client
    events = sse_data(late.text)  # its stream had started: the error is its last event before [DONE]
    assert late.status_code == 200 and events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == 500
    assert sum(json.loads(e)["choices"][0]["delta"].get("content") is not None for e in events[:-2]) >= 3
    assert health == 200
    assert 'vlmserve_requests_total{endpoint="/v1/chat/completions",status="500"} 1.0' in metrics
    failures = [r for r in caplog.records if r.exc_info and "injected" in str(r.exc_info[1])]
    assert {r.name for r in failures} == {"vlmserve.engine"}  # logged where it happened, not again by the server
    assert len([r for r in failures if "failed in the engine" in r.getMessage()]) == 2  # once per request, n or not


def test_a_server_error_is_logged_once_and_counted_once(serve, monkeypatch, caplog):
    def broken_usage(*args, **kwargs):
        raise RuntimeError("injected handler fault")

    monkeypatch.setattr(EngineClient, "usage", broken_usage)

    async def run(client):
        return await client.post("/v1/chat/completions", json=ASK), (await client.get("/metrics")).text

    with caplog.at_level(logging.ERROR):
        response, metrics = serve(run)
    assert response.status_code == 500 and response.json()["error"]["code"] == 500
    assert "injected" not in response.text
    assert len([r for r in caplog.records if r.exc_info and "injected" in str(r.exc_info[1])]) == 1
    assert 'vlmserve_requests_total{endpoint="/v1/chat/completions",status="500"} 1.0' in metrics


def test_grammars_compile_on_the_preparation_threads(serve, engine, monkeypatch):
    compile_grammar, threads = engine.structured_output.compile, []

    def recording(params):
        threads.append(threading.current_thread().name)
        return compile_grammar(params)

    monkeypatch.setattr(engine.structured_output, "compile", recording)

    async def run(client):
        return await client.post("/v1/chat/completions", json={**ASK, "structured_outputs": {"choice": ["yes", "no"]},
                                                               "ignore_eos": False})

    response = serve(run)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] in ("yes", "no")
    assert len(threads) == 1 and threads[0].startswith("vlmserve-prepare")


def test_admission_counts_every_sequence_of_a_request(serve):
    """4 running + 2 queued places: with a 4-sequence request running, a 3-sequence one is refused, 2 fit."""
    long = {**ASK, "max_tokens": 100, "n": 4}

    async def run(client):
        running = asyncio.create_task(client.post("/v1/chat/completions", json=long))
        while "vlmserve_num_requests_running 4.0" not in (await client.get("/metrics")).text:
            await asyncio.sleep(0.05)
        refused = await client.post("/v1/chat/completions", json={**ASK, "n": 3})
        admitted = await client.post("/v1/chat/completions", json={**ASK, "n": 2, "max_tokens": 1})
        never = await client.post("/v1/chat/completions", json={**ASK, "n": 7})
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return refused, admitted, never

    refused, admitted, never = serve(run, max_queue=2)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert admitted.status_code == 200 and len(admitted.json()["choices"]) == 2
    assert never.status_code == 400 and never.json()["error"]["param"] == "n"
