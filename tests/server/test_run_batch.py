"""`vlmserve run-batch`: an OpenAI batch file answered offline by the same app the server runs, every custom_id once,
resumed after a crash left the output half written, and input files that cannot run refused before loading."""

import json

import pytest

from tests.helpers import png_data_url
from tests.server.helpers import MODEL
from vlmserve import cli


def line(custom_id: str, url: str = "/v1/chat/completions", **body) -> dict:
    if url == "/v1/chat/completions":
        body = {"messages": [{"role": "user", "content": f"Say {custom_id}"}], "max_tokens": 4, **body}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"temperature": 0, **body}}


LINES = [line(f"chat-{i}") for i in range(4)] + [
    line("image", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()}},
                                                         {"type": "text", "text": "What is this?"}]}]),
    line("completion", "/v1/completions", prompt="Once upon a time", max_tokens=3),
    line("response", "/v1/responses", input="Hi", max_output_tokens=3),
    line("no-messages", messages=[]),
]


def run_batch(demo_model_dir, input_file, output_file, capsys) -> tuple[int, str]:
    status = cli.main(["run-batch", "-i", str(input_file), "-o", str(output_file), "--model", str(demo_model_dir),
                       "--served-model-name", MODEL, "--dtype", "float32", "--device", "cpu", "--num-kv-blocks",
                       "128", "--no-progress"])
    return status, capsys.readouterr().err


def outputs(path) -> dict[str, dict]:
    answers = [json.loads(text) for text in path.read_text().splitlines()]
    by_id = {answer["custom_id"]: answer for answer in answers}
    assert len(by_id) == len(answers), "a custom_id was answered twice"
    return by_id


def test_every_line_is_answered_once_and_a_crashed_run_resumes(demo_model_dir, tmp_path, capsys):
    input_file, output_file = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    input_file.write_text("\n".join(json.dumps(request) for request in LINES) + "\n")
    assert run_batch(demo_model_dir, input_file, output_file, capsys)[0] == 0
    first = outputs(output_file)
    assert set(first) == {request["custom_id"] for request in LINES}
    statuses = {custom_id: answer["response"]["status_code"] for custom_id, answer in first.items()}
    assert statuses.pop("no-messages") == 400 and set(statuses.values()) == {200}
    assert first["image"]["response"]["body"]["usage"]["num_images"] == 1
    assert first["response"]["response"]["body"]["object"] == "response"

    written = output_file.read_text().splitlines()
    kept = written[:3]
    output_file.write_text("\n".join(kept) + "\n" + written[3][:25])  # the run died writing its fourth answer
    rerun = set(first) - {json.loads(text)["custom_id"] for text in kept}
    status, summary = run_batch(demo_model_dir, input_file, output_file, capsys)
    failed = int("no-messages" in rerun)
    assert status == 0 and f"{len(rerun) - failed} lines ok, {failed} failed, 3 already in" in summary
    resumed = outputs(output_file)
    assert set(resumed) == set(first)
    for text in kept:  # the lines a crash kept are not answered again
        assert resumed[json.loads(text)["custom_id"]] == json.loads(text)


@pytest.mark.parametrize("requests, error", [
    ([line("same"), line("same")], "custom_id 'same' is also request 1's"),
    ([{**line("a"), "url": "/v1/embeddings"}], "url must be"),
])
def test_an_input_that_cannot_run_is_refused_before_the_model_loads(demo_model_dir, tmp_path, capsys, requests,
                                                                    error):
    input_file = tmp_path / "in.jsonl"
    input_file.write_text("\n".join(json.dumps(request) for request in requests))
    status, message = run_batch(demo_model_dir, input_file, tmp_path / "out.jsonl", capsys)
    assert status == 2 and error in message and not (tmp_path / "out.jsonl").exists()
