"""MathVista with an LLM answer extractor: stub endpoints for the model and the extractor, synthetic data. The
extractor's reply is what gets scored, it is cached apart from the model's answers, named in the report, and
an extractor that fails makes errors, not wrong answers."""

import json
import re

import pytest

from tests.evals.stubs import StubEndpoint, error, prompt_text
from tests.evals.synthetic import write_dataset
from vlmserve.cli import main
from vlmserve.evals.endpoint import Endpoint
from vlmserve.evals.runner import evaluate
from vlmserve.evals.tasks.mathvista_extractor import DEMO_PROMPT

NUM_ITEMS = 4  # one of each kind: multi_choice, integer, float, list
FAST = dict(progress=False, backoff_s=0.01)
PROSE = "Looking at the figure carefully, I am fairly confident about what it shows."


@pytest.fixture
def data(tmp_path):
    """(data_dir, {question number: the extraction that is right for it})."""
    gold = write_dataset("mathvista", tmp_path / "data" / "mathvista", NUM_ITEMS)
    right = {i: "B" if i % 4 == 0 else item.answers[0] for i, item in enumerate(gold)}  # "B" is "square"
    return tmp_path / "data", right


def question(text: str) -> int:
    return int(re.search(r"Question (\d+) about", text).group(1))


def extracting(right: dict[int, str]):
    """An extractor stub that finds the question in the prompt and replies with its right answer."""
    return lambda body, number: right[question(body["messages"][0]["content"])] + "\n"


def mathvista(results: dict) -> dict:
    return results["tasks"]["mathvista"]["endpoints"]["m"]


def test_the_extractors_answer_is_scored_and_cached_apart_from_the_models(data, tmp_path):
    data_dir, right = data
    model, extractor = StubEndpoint(lambda body, number: PROSE), StubEndpoint(extracting(right))
    out = tmp_path / "out"
    with model.serve() as m, extractor.serve() as x:
        rules = evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, out, **FAST)
        llm = evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, out, extractor=Endpoint(x.url, "x"), **FAST)
        again = evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, out, extractor=Endpoint(x.url, "x"), **FAST)
        other = evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, out, extractor=Endpoint(x.url, "y"), **FAST)

    assert mathvista(rules)["score_pct"] == 0.0  # the rules find no answer in the prose
    assert mathvista(llm)["score_pct"] == mathvista(again)["score_pct"] == mathvista(other)["score_pct"] == 100.0
    assert len(model.requests) == NUM_ITEMS  # switching extractors re-extracts without asking the model again
    assert len(extractor.requests) == 2 * NUM_ITEMS  # once for "x" (cached for the rerun), once for "y"
    body = extractor.requests[0]
    assert body["temperature"] == 0.0 and body["messages"][0]["content"].startswith(DEMO_PROMPT.strip())
    assert body["messages"][0]["content"].endswith(f"\n\n{PROSE}\n\nExtracted answer: ")
    replies = [json.loads(line) for line in next((out / "records").glob("*/mathvista.extracted-x-*.jsonl")).open()]
    assert {r["extractor"] for r in replies} == {f"x at {x.url}/v1/chat/completions"}
    assert {r["output"] for r in replies} == {answer + "\n" for answer in right.values()}


def test_answers_the_quick_rules_read_are_not_sent_to_the_extractor(data, tmp_path):
    data_dir, right = data
    answers = {0: "square", 1: "The shape has 4 corners.", 2: "2.5", 3: "The list is one, two."}
    model = StubEndpoint(lambda body, number: answers[question(prompt_text(body))])
    extractor = StubEndpoint(extracting(right))
    with model.serve() as m, extractor.serve() as x:
        results = evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, tmp_path, extractor=Endpoint(x.url, "x"),
                           **FAST)
    assert mathvista(results)["score_pct"] == 100.0
    assert len(extractor.requests) == 2  # the choice "square" and the number "2.5" need no extractor


def test_the_report_names_the_extraction_method(data, tmp_path):
    data_dir, right = data
    write_dataset("textvqa", data_dir / "textvqa", 2)
    model, extractor = StubEndpoint(lambda body, number: PROSE), StubEndpoint(extracting(right))
    with model.serve() as m, extractor.serve() as x:
        evaluate([Endpoint(m.url, "m")], ["mathvista", "textvqa"], data_dir, tmp_path / "llm",
                 extractor=Endpoint(x.url + "/v1", "judge-1"), **FAST)
        evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, tmp_path / "rules", **FAST)
    method = f"LLM extractor judge-1 at {x.url}/v1/chat/completions"
    results = json.loads((tmp_path / "llm" / "results.json").read_text())
    assert results["tasks"]["mathvista"]["extraction"] == method
    assert results["tasks"]["textvqa"]["extraction"] == "rules"  # a task that uses no extractor
    assert f"answer extraction: {method}." in (tmp_path / "llm" / "report.md").read_text()
    assert "answer extraction: rules." in (tmp_path / "rules" / "report.md").read_text()


def test_a_failing_extractor_gives_errors_not_wrong_answers(data, tmp_path):
    data_dir, right = data
    model, broken, working = (StubEndpoint(lambda body, number: PROSE), StubEndpoint(lambda body, number: error(503)),
                              StubEndpoint(extracting(right)))
    with model.serve() as m, broken.serve() as b, working.serve() as w:
        failed = evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, tmp_path, max_retries=1,
                          extractor=Endpoint(b.url, "x"), **FAST)
        fixed = evaluate([Endpoint(m.url, "m")], ["mathvista"], data_dir, tmp_path, extractor=Endpoint(w.url, "x"),
                         **FAST)
    summary = mathvista(failed)
    assert summary["num_errors"] == NUM_ITEMS and summary["num_scored"] == 0 and summary["score_pct"] is None
    assert all(message.startswith("extractor: HTTP 503") for message in summary["error_examples"])
    assert len(broken.requests) == 2 * NUM_ITEMS  # one retry each
    assert mathvista(fixed)["score_pct"] == 100.0 and len(model.requests) == NUM_ITEMS  # the answers were kept


def test_cli_extractor_options(data, tmp_path, capsys):
    data_dir, right = data
    model, extractor = StubEndpoint(lambda body, number: PROSE), StubEndpoint(extracting(right))
    with model.serve() as m, extractor.serve() as x:
        code = main(["eval", "--endpoint", m.url, "--model", "m", "--task", "mathvista", "--data", str(data_dir),
                     "--output", str(tmp_path / "out"), "--extractor-endpoint", x.url, "--extractor-model", "x",
                     "--extractor-api-key", "sk-x"])
    assert code == 0 and "mathvista\tm\t100.0" in capsys.readouterr().out
    assert set(extractor.authorizations) == {"Bearer sk-x"}
    assert main(["eval", "--endpoint", m.url, "--model", "m", "--task", "mathvista", "--data", str(data_dir),
                 "--extractor-model", "x"]) == 2
    assert "--extractor-endpoint URL and --extractor-model NAME together" in capsys.readouterr().err
