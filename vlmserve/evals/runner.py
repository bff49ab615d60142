"""Evaluate OpenAI-compatible endpoints on benchmark tasks: ask every item, cache each answer, score, report.

Every endpoint answers the same items with the same request (greedy, a fixed seed, the task's max_tokens), so
their scores can be compared item by item. Endpoints are asked one after another, never at once, so that two
endpoints sharing a machine do not slow each other's latency figures down.
"""

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from vlmserve.evals.endpoint import Completion, Endpoint, EndpointError, RetryPolicy, chat
from vlmserve.evals.records import ERROR, OK, RecordFile, request_key
from vlmserve.evals.report import write_report
from vlmserve.evals.summary import summarise
from vlmserve.evals.tasks import TASKS, get_task
from vlmserve.evals.tasks.base import EvalItem, Task

# What a record holds beyond the item: the answer and its score (ok), or the error and the attempts made.
RESULT_FIELDS = ("output", "extracted", "score", "parse_failed", "extra_scores", "latency_s", "prompt_tokens",
                 "completion_tokens", "cost", "finish_reason", "attempts", "error")


@dataclass(frozen=True)
class RunSettings:
    """What every request shares, and how hard to try; recorded in results.json."""
    temperature: float
    seed: int
    concurrency: int
    timeout_s: float
    max_retries: int
    limit: int | None


def evaluate(endpoints: list[Endpoint], task_names: list[str], data_dir: Path | str, output_dir: Path | str,
             limit: int | None = None, concurrency: int = 8, temperature: float = 0.0, seed: int = 0,
             timeout_s: float = 600.0, max_retries: int = 5, backoff_s: float = 1.0, progress: bool = True) -> dict:
    """Ask each endpoint every item of each task (the first `limit` items of `data_dir/<task>/`), writing the
    answers under `output_dir/records/` and report.md, results.json and one chart per task to `output_dir`.
    Answers already recorded there are not asked again. Returns the results dict written to results.json.

    Raises ValueError for an unknown task or a bad setting, and vlmserve.evals.data.DataError for missing or
    malformed data, before any request is sent."""
    tasks = _resolve(endpoints, task_names, concurrency)
    settings = RunSettings(temperature, seed, concurrency, timeout_s, max_retries, limit)
    items = {task.name: task.load(Path(data_dir) / task.name, limit=limit) for task in tasks}
    output_dir = Path(output_dir)
    policy = RetryPolicy(max_retries=max_retries, backoff_s=backoff_s)
    records = asyncio.run(_ask_all(endpoints, tasks, items, output_dir, settings, policy, progress))
    results = summarise(endpoints, tasks, items, records, asdict(settings))
    write_report(results, output_dir)
    return results


def _resolve(endpoints: list[Endpoint], task_names: list[str], concurrency: int) -> list[Task]:
    if not endpoints:
        raise ValueError("give at least one endpoint")
    if len({endpoint.key for endpoint in endpoints}) < len(endpoints):
        raise ValueError("the same endpoint (URL and model) is given twice")
    if not task_names:
        raise ValueError(f"give at least one task; known tasks: {', '.join(TASKS)}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    return [get_task(name) for name in dict.fromkeys(task_names)]


async def _ask_all(endpoints, tasks, items, output_dir, settings, policy, progress) -> dict:
    """records[endpoint.key][task.name][item_id] -> the record (ok or error) for every item."""
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    records = {}
    async with httpx.AsyncClient(timeout=settings.timeout_s, limits=limits) as client:
        for endpoint in endpoints:
            for task in tasks:
                path = output_dir / "records" / endpoint.key / f"{task.name}.jsonl"
                records.setdefault(endpoint.key, {})[task.name] = await _ask_task(
                    client, endpoint, task, items[task.name], RecordFile(path), settings, policy, progress)
    return records


async def _ask_task(client, endpoint: Endpoint, task: Task, items: list[EvalItem], file: RecordFile,
                    settings: RunSettings, policy: RetryPolicy, progress: bool) -> dict[str, dict]:
    bodies = {item.item_id: {"messages": item.messages, "max_tokens": task.max_tokens,
                             "temperature": settings.temperature, "seed": settings.seed} for item in items}
    keys = {item_id: request_key(body) for item_id, body in bodies.items()}
    done = file.answered(keys)
    for item in items:  # cached outputs are scored again, so a fixed metric never needs a new request
        if item.item_id in done:
            done[item.item_id].update(_scored(task, item, done[item.item_id]["output"]))
    semaphore = asyncio.Semaphore(settings.concurrency)

    async def ask(item: EvalItem) -> dict:
        async with semaphore:
            try:
                completion = await chat(client, endpoint, bodies[item.item_id], policy)
            except EndpointError as err:
                return _record(item, keys[item.item_id], ERROR, error=str(err), attempts=err.attempts)
            return _record(item, keys[item.item_id], OK, **_answer_fields(completion),
                           **_scored(task, item, completion.text))

    pending = [ask(item) for item in items if item.item_id not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(pending), desc=f"{endpoint.describe()} {task.name}",
               unit="item", disable=not progress)
    with file, bar:
        for answer in asyncio.as_completed(pending):
            record = await answer
            file.append(record)
            done[record["item_id"]] = record
            bar.update()
            bar.set_postfix_str(_running(done.values()), refresh=False)
    return {item.item_id: done[item.item_id] for item in items}


def _scored(task: Task, item: EvalItem, output: str) -> dict:
    score = task.score(item, output)
    return {"score": score.value, "extracted": score.extracted, "parse_failed": score.parse_failed,
            "extra_scores": dict(score.extra)}


def _record(item: EvalItem, key: str, status: str, **fields) -> dict:
    return {"item_id": item.item_id, "status": status, "request_key": key, "prompt": _prompt_text(item.messages),
            "image_hashes": list(item.image_hashes), "answers": list(item.answers),
            **dict.fromkeys(RESULT_FIELDS), **fields}


def _answer_fields(completion: Completion) -> dict:
    fields = asdict(completion)
    fields["output"] = fields.pop("text")
    return fields


def _prompt_text(messages: list[dict]) -> str:
    texts = []
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts += [part["text"] for part in parts if part.get("type") == "text"]
    return "\n\n".join(texts)


def _running(records) -> str:
    scores = [r["score"] for r in records if r["status"] == OK]
    errors = sum(r["status"] == ERROR for r in records)
    mean = f"{100 * sum(scores) / len(scores):.1f}%" if scores else "-"
    return f"score={mean} errors={errors}"
