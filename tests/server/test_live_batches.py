"""OpenAI's Files and Batches APIs through the official openai client against `vlmserve serve --data-dir`: a batch
with images and bad lines answered to completion, every endpoint a batch may call, files kept per API key, inputs
refused before a batch starts, a batch cancelled and one expiring mid-run, and a server killed mid-batch whose
restart finishes the batch with no line lost or answered twice."""

import json
import time

import openai
import pytest

from tests.helpers import png_data_url
from tests.server.helpers import MODEL, LiveServer, metric

KEY, OTHER_KEY = "key-a", "key-b"
MAX_LINES, MAX_FILE_BYTES = 30, 200_000
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def server(demo_model_dir, tmp_path_factory):
    live = LiveServer(demo_model_dir, "--data-dir", str(tmp_path_factory.mktemp("batches")), "--api-key", KEY,
                      "--api-key", OTHER_KEY, "--max-batch-lines", str(MAX_LINES), "--max-batch-file-bytes",
                      str(MAX_FILE_BYTES), "--max-num-seqs", "4", "--scheduling-policy", "priority")
    yield live
    live.stop()


def client_of(server: LiveServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def chat_line(custom_id: str, content, max_tokens: int = 4, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                     "temperature": 0, **body}}


def long_lines(count: int) -> list[dict]:
    """Lines of different lengths, so they finish one by one."""
    return [chat_line(f"long-{i}", f"story {i}", max_tokens=60 + 25 * i, ignore_eos=True) for i in range(count)]


def upload(client: openai.OpenAI, lines: list[dict]) -> str:
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    return client.files.create(file=("input.jsonl", text.encode()), purpose="batch").id


def start(client: openai.OpenAI, lines: list[dict], endpoint: str = "/v1/chat/completions", window: str = "24h"):
    return client.batches.create(input_file_id=upload(client, lines), endpoint=endpoint, completion_window=window,
                                 metadata={"job": "test"})


def wait_until(client: openai.OpenAI, batch_id: str, done, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not done(batch := client.batches.retrieve(batch_id)):
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.05)
    return batch


def ended(client: openai.OpenAI, batch_id: str, timeout_s: float = 120):
    return wait_until(client, batch_id, lambda batch: batch.status in ENDED, timeout_s)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_with_images_and_bad_lines_completes_with_every_line_answered_once(server):
    client = client_of(server)
    lines = [chat_line("text", "Hello"),
             chat_line("image", [{"type": "image_url", "image_url": {"url": png_data_url()}},
                                 {"type": "text", "text": "What is this?"}]),
             {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}},
             chat_line("other-model", "Hi", model="gpt-4o"),
             chat_line("streamed", "Hi", stream=True)]
    batch = start(client, lines)
    assert batch.status == "validating" and batch.request_counts.total == 5 and batch.metadata == {"job": "test"}
    batch = ended(client, batch.id)
    assert batch.status == "completed" and batch.completed_at >= batch.in_progress_at >= batch.created_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 3)
    outputs, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert [line["custom_id"] for line in outputs] == ["text", "image"]
    statuses = {line["custom_id"]: line["response"]["status_code"] for line in errors}
    assert statuses == {"no-messages": 400, "other-model": 404, "streamed": 400}
    assert all(line["error"] is None and line["id"].startswith("batch_req_") for line in outputs + errors)
    answers = [line["response"]["body"] for line in outputs]
    assert answers[0]["object"] == "chat.completion" and answers[1]["usage"]["num_images"] == 1
    assert outputs[0]["response"]["request_id"] == answers[0]["id"]
    usage = batch.usage.model_extra
    assert usage["num_images"] == 1 and usage["cost"] == pytest.approx(sum(a["usage"]["cost"] for a in answers))
    assert batch.usage.output_tokens == sum(a["usage"]["completion_tokens"] for a in answers) == 8
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_lines_asking_about_one_image_share_the_encoder_cache(server):
    client, image = client_of(server), png_data_url(color=(10, 200, 90))
    question = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "What is this?"}]
    encoded = metric(server, "vlmserve_images_encoded_total", KEY)
    batch = ended(client, start(client, [chat_line(f"same-{i}", question) for i in range(3)]).id)
    assert batch.request_counts.completed == 3 and batch.usage.model_extra["num_images"] == 3
    assert metric(server, "vlmserve_images_encoded_total", KEY) - encoded == 1


@pytest.mark.parametrize("endpoint, body", [
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 3}),
    ("/v1/responses", {"input": "Say hi", "max_output_tokens": 3}),
])
def test_completions_and_responses_lines_are_answered(server, endpoint, body):
    client = client_of(server)
    line = {"custom_id": "one", "method": "POST", "url": endpoint, "body": {"model": MODEL, **body}}
    batch = ended(client, start(client, [line], endpoint).id)
    [output] = lines_of(client, batch.output_file_id)
    assert output["response"]["status_code"] == 200 and batch.usage.output_tokens == 3
    assert output["response"]["body"]["object"] == {"/v1/completions": "text_completion",
                                                    "/v1/responses": "response"}[endpoint]


def test_files_and_batches_belong_to_the_key_that_made_them(server):
    mine, theirs = client_of(server), client_of(server, OTHER_KEY)
    batch = ended(mine, start(mine, [chat_line("a", "Hi")]).id)
    for call in (lambda: theirs.files.retrieve(batch.input_file_id),
                 lambda: theirs.files.content(batch.output_file_id),
                 lambda: theirs.files.delete(batch.input_file_id),
                 lambda: theirs.batches.retrieve(batch.id), lambda: theirs.batches.cancel(batch.id),
                 lambda: theirs.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                                               completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in theirs.batches.list()]
    assert batch.input_file_id not in [f.id for f in theirs.files.list()]
    assert mine.files.delete(batch.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        mine.files.retrieve(batch.input_file_id)


def test_listings_page_newest_first(server):
    client = client_of(server)
    ids = [start(client, [chat_line("a", "Hi")]).id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert client.batches.list(limit=1, after=ids[1]).data[0].id == ids[0]
    for batch_id in ids:
        ended(client, batch_id)


@pytest.mark.parametrize("content, error", [
    ([chat_line("same", "a"), chat_line("same", "b")], "custom_id 'same' is also request 1's"),
    ([{**chat_line("a", "Hi"), "url": "/v1/completions"}], "url must be '/v1/chat/completions'"),
    ([{**chat_line("a", "Hi"), "method": "GET"}], 'method must be "POST"'),
    ([chat_line(f"r{i}", "Hi") for i in range(MAX_LINES + 1)], f"more than {MAX_LINES} requests"),
    ("not json\n", "line 1 is not JSON"),
    ("", "holds no requests"),
])
def test_an_input_file_that_cannot_run_is_refused_when_the_batch_is_created(server, content, error):
    client = client_of(server)
    text = content if isinstance(content, str) else "\n".join(json.dumps(line) for line in content)
    file_id = client.files.create(file=("input.jsonl", text.encode()), purpose="batch").id
    with pytest.raises(openai.BadRequestError, match=error) as refused:
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.body["param"] == "input_file_id"


def test_uploads_and_batch_fields_out_of_bounds_are_refused_by_name(server):
    client = client_of(server)
    with pytest.raises(openai.APIStatusError, match="--max-batch-file-bytes") as too_big:
        client.files.create(file=("big.jsonl", b"x" * (MAX_FILE_BYTES + 1)), purpose="batch")
    assert too_big.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="purpose must be 'batch'"):
        client.files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
    kept = client.files.create(file=("a.jsonl", b"{}"), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    assert kept.expires_at == kept.created_at + 3600
    with pytest.raises(openai.BadRequestError, match="seconds from 3600 to 2592000") as short:
        client.files.create(file=("a.jsonl", b"{}"), purpose="batch", expires_after={"anchor": "created_at",
                                                                                      "seconds": 60})
    assert short.value.body["param"] == "expires_after"
    file_id = upload(client, [chat_line("a", "Hi")])
    for fields, param in (({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "soon"},
                                                                         "completion_window")):
        request = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(**request)
        assert refused.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")


def test_cancelling_stops_the_lines_and_keeps_the_answers_so_far(server):
    client = client_of(server)
    batch = start(client, long_lines(12))
    wait_until(client, batch.id, lambda b: b.request_counts.completed >= 1)
    with pytest.raises(openai.ConflictError):
        client.files.delete(batch.input_file_id)  # still read by the batch
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    batch = ended(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    outputs = lines_of(client, batch.output_file_id)
    assert 1 <= len(outputs) == batch.request_counts.completed < 12 and batch.error_file_id is None
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_interactive_requests_are_answered_while_a_batch_fills_the_engine(server):
    client = client_of(server)
    batch = start(client, long_lines(12))
    wait_until(client, batch.id, lambda b: b.status == "in_progress")
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                            extra_body={"priority": -1})
    assert answer.usage.completion_tokens == 3
    assert client.batches.retrieve(batch.id).request_counts.completed < 12
    client.batches.cancel(batch.id)
    ended(client, batch.id)


def test_lines_not_answered_within_the_completion_window_expire(server):
    client = client_of(server)
    batch = ended(client, start(client, long_lines(12), window="2s").id)
    assert batch.status == "expired" and batch.expired_at is not None
    outputs, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert errors and all(line["error"]["code"] == "batch_expired" and line["response"] is None for line in errors)
    assert sorted(line["custom_id"] for line in outputs + errors) == sorted(f"long-{i}" for i in range(12))


def stop_mid_batch(live: LiveServer, batch_id: str, completed: int, kill: bool) -> int:
    """Stop the server once `completed` lines are answered (SIGKILL: no shutdown at all; SIGTERM: a drain);
    the lines answered by then."""
    answered = wait_until(client_of(live), batch_id, lambda b: b.request_counts.completed >= completed)
    if kill:
        live.process.kill()
        live.process.wait()
    else:
        assert live.terminate() == 0
    return answered.request_counts.completed


def test_a_batch_survives_the_server_stopping_and_being_killed_mid_run(demo_model_dir, tmp_path):
    lines = long_lines(10)
    restart = ("--data-dir", str(tmp_path), "--max-num-seqs", "2")
    live = LiveServer(demo_model_dir, *restart)
    try:
        batch_id = start(client_of(live), lines).id
        lost = start(client_of(live), long_lines(3))
        assert stop_mid_batch(live, batch_id, 2, kill=False) < 10
        (tmp_path / "files" / lost.input_file_id).unlink()  # the disk lost this one's input while it was down
        live = LiveServer(demo_model_dir, *restart)
        failed = ended(client_of(live), lost.id)
        assert failed.status == "failed" and failed.errors.data[0].code == "input_file_missing"
        assert stop_mid_batch(live, batch_id, 5, kill=True) < 10
        live = LiveServer(demo_model_dir, *restart)
        client = client_of(live)
        batch = ended(client, batch_id)
        assert batch.status == "completed" and batch.request_counts.completed == 10 and batch.error_file_id is None
        custom_ids = [line["custom_id"] for line in lines_of(client, batch.output_file_id)]
        assert custom_ids == [line["custom_id"] for line in lines]
    finally:
        live.stop()
