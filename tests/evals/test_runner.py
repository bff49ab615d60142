"""evaluate() against endpoints on loopback: stub OpenAI-compatible servers scripted per test, and our own server
on the tiny random model. Data is synthetic, in the real layouts, with known answers and known wrong scores."""

import asyncio
import json
from collections import Counter
import time
from pathlib import Path

import pytest

from tests.evals.stubs import ServedApp, StubEndpoint, error, request_identity
from tests.evals.synthetic import write_dataset
from tests.server.helpers import engine_config
from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.engine.llm_engine import build_engine
from vlmserve.evals.endpoint import Endpoint
from vlmserve.evals.runner import evaluate
from vlmserve.evals.tasks import get_task
from vlmserve.server.app import build_app
from vlmserve.server.config import ServerConfig

NUM_ITEMS = 6
FAST = dict(progress=False, backoff_s=0.01)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(data_dir, gold): five tasks' synthetic data, and per task {request identity: SyntheticItem} (VQAv2 asks
    the same question of the same image more than once: those items share an identity and their answers)."""
    data_dir = tmp_path_factory.mktemp("data")
    gold = {}
    for name in ("vqav2", "textvqa", "docvqa", "chartqa_cot", "mmmu_cot"):
        synthetic = {s.item_id: s for s in write_dataset(name, data_dir / name, NUM_ITEMS)}
        gold[name] = [(request_identity({"messages": item.messages}), synthetic[item.item_id])
                      for item in get_task(name).load(data_dir / name)]
    return data_dir, gold


def answering(gold: dict, attribute: str):
    """A stub reply that looks the item up by its prompt and images and sends its correct or wrong output."""
    by_request = {key: item for items in gold.values() for key, item in items}
    return lambda body, number: getattr(by_request[request_identity(body)], attribute)


def test_gold_and_wrong_endpoints_side_by_side(data, tmp_path):
    data_dir, gold = data
    tasks = ["vqav2", "textvqa", "docvqa", "chartqa_cot", "mmmu_cot"]
    right, wrong = StubEndpoint(answering(gold, "correct_output")), StubEndpoint(answering(gold, "wrong_output"))
    with right.serve() as r, wrong.serve() as w:
        results = evaluate([Endpoint(r.url, "right"), Endpoint(w.url + "/v1", "wrong")], tasks, data_dir, tmp_path,
                           concurrency=3, **FAST)

    assert len(right.requests) == len(wrong.requests) == NUM_ITEMS * len(tasks)
    assert {b["temperature"] for b in right.requests} == {0.0} and {b["seed"] for b in right.requests} == {0}
    task_of = {key: name for name, items in gold.items() for key, _ in items}
    assert all(b["max_tokens"] == get_task(task_of[request_identity(b)]).max_tokens for b in right.requests)
    for name in tasks:
        task = results["tasks"][name]
        expected_wrong = 100 * sum(item.wrong_value for _, item in gold[name]) / NUM_ITEMS
        assert task["endpoints"]["right"]["score_pct"] == 100.0
        assert task["endpoints"]["wrong"]["score_pct"] == pytest.approx(expected_wrong)
        assert task["endpoints"]["right"]["num_errors"] == 0 and task["endpoints"]["right"]["num_scored"] == NUM_ITEMS
        assert task["endpoints"]["right"]["cost_usd"] == pytest.approx(0.001 * NUM_ITEMS)
        assert len(task["disagreements"]) == NUM_ITEMS  # every wrong output scores below 1
        assert (tmp_path / f"chart_{name}.png").read_bytes().startswith(b"\x89PNG")
    vqa = results["tasks"]["vqav2"]["comparisons"][0]  # "purple" earns 0.3 < 0.5: every pair is discordant
    assert (vqa["a_only_right"], vqa["b_only_right"], vqa["mcnemar_method"]) == (NUM_ITEMS, 0, "exact binomial")
    assert vqa["mcnemar_p"] == pytest.approx(2 * 0.5 ** NUM_ITEMS)
    doc = results["tasks"]["docvqa"]["comparisons"][0]  # ANLS 0.875 >= 0.5 counts as right: no discordance
    assert (doc["both_right"], doc["mcnemar_p"]) == (NUM_ITEMS, 1.0)
    assert doc["difference_pct"] == pytest.approx(12.5)

    assert json.loads((tmp_path / "results.json").read_text()) == results
    report = (tmp_path / "report.md").read_text()
    assert "### Disagreements" in report and "McNemar" in report and "11B Vision Instruct 75.2" in report
    assert "| 5000 | " in report  # a VQAv2 disagreement row, by question id
    assert "local; card: test" in report  # VQAv2 runs on validation, the card is on test
    assert get_task("docvqa").prompt_template.splitlines()[0] in report


def test_retries_429_honouring_retry_after_and_500_then_scores_without_errors(data, tmp_path):
    data_dir, gold = data
    correct = answering(gold, "correct_output")

    async def flaky(body, number):
        if number == 1:
            return error(429, retry_after="1")
        if number == 2:
            return error(500)
        if number == 3:
            await asyncio.sleep(1.2)  # past the client's timeout
        return correct(body, number)

    stub = StubEndpoint(flaky)
    start = time.monotonic()
    with stub.serve() as s:
        results = evaluate([Endpoint(s.url, "m")], ["vqav2"], data_dir, tmp_path, concurrency=1, timeout_s=0.5,
                           **FAST)
    assert time.monotonic() - start >= 1.0  # the 429's Retry-After, not the 10 ms backoff
    summary = results["tasks"]["vqav2"]["endpoints"]["m"]
    assert (summary["score_pct"], summary["num_errors"], summary["num_scored"]) == (100.0, 0, NUM_ITEMS)
    assert len(stub.requests) == NUM_ITEMS + 3
    records = _records(tmp_path)
    assert sorted(r["attempts"] for r in records) == [1] * (NUM_ITEMS - 1) + [4]  # item one: 429, 500, timeout, ok


def test_failures_are_errors_not_wrong_answers(data, tmp_path):
    data_dir, _ = data
    down, refusing = StubEndpoint(lambda body, n: error(503)), StubEndpoint(lambda body, n: error(400))
    with down.serve() as d, refusing.serve() as r:
        results = evaluate([Endpoint(d.url, "down"), Endpoint(r.url, "refusing")], ["docvqa"], data_dir, tmp_path,
                           max_retries=2, **FAST)
    assert len(down.requests) == 3 * NUM_ITEMS  # 5xx: retried twice
    assert len(refusing.requests) == NUM_ITEMS  # 400: the request itself is wrong, asking again cannot help
    for label in ("down", "refusing"):
        summary = results["tasks"]["docvqa"]["endpoints"][label]
        assert (summary["score_pct"], summary["num_scored"], summary["num_errors"]) == (None, 0, NUM_ITEMS)
        assert "stub error" in summary["error_examples"][0]
    assert results["tasks"]["docvqa"]["comparisons"][0]["num_paired"] == 0
    assert results["tasks"]["docvqa"]["disagreements"] == []
    report = (tmp_path / "report.md").read_text()
    assert "Errors from down: `HTTP 503" in report and "Errors from refusing: `HTTP 400" in report


def test_rerun_asks_only_unanswered_items(data, tmp_path):
    data_dir, gold = data
    correct = answering(gold, "correct_output")
    answered = 4
    first = StubEndpoint(lambda body, n: correct(body, n) if n <= answered else error(500))
    with first.serve() as s:
        url = s.url
        results = evaluate([Endpoint(url, "m")], ["mmmu_cot"], data_dir, tmp_path, concurrency=1, max_retries=0,
                           **FAST)
    summary = results["tasks"]["mmmu_cot"]["endpoints"]["m"]
    assert (summary["num_scored"], summary["num_errors"]) == (answered, NUM_ITEMS - answered)
    records = _records(tmp_path)
    assert {"prompt", "image_hashes", "output", "extracted", "score", "parse_failed", "latency_s", "prompt_tokens",
            "completion_tokens", "cost", "finish_reason"} <= set(records[0])
    first_answers = Counter(request_identity(b) for b in first.requests[:answered])
    with next((tmp_path / "records").glob("*/*.jsonl")).open("a") as torn:  # as if killed mid-write
        torn.write('{"item_id": "validation_Ma')

    second = StubEndpoint(correct)
    with ServedApp(second.app, port=int(url.rsplit(":", 1)[1])):  # the same endpoint, back up
        results = evaluate([Endpoint(url, "m")], ["mmmu_cot"], data_dir, tmp_path, **FAST)
    # MMMU repeats some question-image pairs, so compare multisets: first answers + second requests = every item
    assert first_answers + Counter(request_identity(b) for b in second.requests) == Counter(
        key for key, _ in gold["mmmu_cot"])
    assert results["tasks"]["mmmu_cot"]["endpoints"]["m"]["score_pct"] == 100.0
    assert results["tasks"]["mmmu_cot"]["endpoints"]["m"]["num_errors"] == 0

    third = StubEndpoint(correct)
    with ServedApp(third.app, port=int(url.rsplit(":", 1)[1])):
        evaluate([Endpoint(url, "m")], ["mmmu_cot"], data_dir, tmp_path, **FAST)
        assert third.requests == []  # all answered
        evaluate([Endpoint(url, "m")], ["mmmu_cot"], data_dir, tmp_path, seed=1, **FAST)
        assert len(third.requests) == NUM_ITEMS  # another seed is another request


def test_our_server_on_the_tiny_model(data, demo_model_dir, tmp_path):
    """The real app in process on loopback: the run completes and every item is scored (the answers of random
    weights mean nothing)."""
    data_dir, _ = data
    app = build_app(AsyncLLMEngine(build_engine(engine_config(demo_model_dir))), ServerConfig(served_model_name="tiny"))
    with ServedApp(app) as served:
        results = evaluate([Endpoint(served.url, "tiny")], ["vqav2", "textvqa"], data_dir, tmp_path, limit=3,
                           **FAST)
    for name in ("vqav2", "textvqa"):
        summary = results["tasks"][name]["endpoints"]["tiny"]
        assert (summary["num_scored"], summary["num_errors"]) == (3, 0)
        assert 0.0 <= summary["score_pct"] <= 100.0
        assert summary["prompt_tokens"] > 0 and summary["cost_usd"] > 0  # vlmserve sends usage.cost
    assert (tmp_path / "report.md").is_file()


def _records(output_dir: Path) -> list[dict]:
    files = list((output_dir / "records").glob("*/*.jsonl"))
    assert len(files) == 1
    return [json.loads(line) for line in files[0].read_text().splitlines()]
