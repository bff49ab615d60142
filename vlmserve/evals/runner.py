"""Evaluate OpenAI-compatible endpoints on benchmark tasks: ask every item, cache each answer, score, report.

Every endpoint answers the same items with the same request (greedy, a fixed seed, the task's max_tokens), so
their scores can be compared item by item. Endpoints are asked one after another, never at once, so that two
endpoints sharing a machine do not slow each other's latency figures down. An optional LLM answer extractor
(MathVista's official method) is asked after the model, its replies cached apart from the model's answers.
"""

import asyncio
import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from vlmserve.evals.endpoint import Completion, Endpoint, EndpointError, RetryPolicy, chat
from vlmserve.evals.records import ERROR, OK, RecordFile, request_key
from vlmserve.evals.report import write_report
from vlmserve.evals.summary import summarise
from vlmserve.evals.tasks import TASKS, get_task
from vlmserve.evals.tasks.base import EvalItem, Score, Task
from vlmserve.evals.tasks.mathvista_extractor import EXTRACTOR_MAX_TOKENS

# What a record holds beyond the item: the answer and its score (ok), or the error and the attempts made.
RESULT_FIELDS = ("output", "extracted", "score", "parse_failed", "extra_scores", "latency_s", "prompt_tokens",
                 "completion_tokens", "cost", "finish_reason", "attempts", "error", "extractor", "extractor_output")


@dataclass(frozen=True)
class Extraction:
    """An LLM answer extractor for one endpoint's answers to one task, and its cache: one file per extractor, so
    switching extractors re-extracts (never re-asks the model) and switching back finds the old replies."""
    endpoint: Endpoint
    file: RecordFile


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
             timeout_s: float = 600.0, max_retries: int = 5, backoff_s: float = 1.0, progress: bool = True,
             extractor: Endpoint | None = None) -> dict:
    """Ask each endpoint every item of each task (the first `limit` items of `data_dir/<task>/`), writing the
    answers under `output_dir/records/` and report.md, results.json and one chart per task to `output_dir`.
    Answers already recorded there are not asked again. Returns the results dict written to results.json.

    With `extractor`, tasks that use one (MathVista) have it extract the answer from each response the quick
    rules cannot read, as the official pipeline does; without, their answers are extracted by rules alone.

    Raises ValueError for an unknown task or a bad setting, and vlmserve.evals.data.DataError for missing or
    malformed data, before any request is sent."""
    tasks = _resolve(endpoints, task_names, concurrency)
    settings = RunSettings(temperature, seed, concurrency, timeout_s, max_retries, limit)
    items = {task.name: task.load(Path(data_dir) / task.name, limit=limit) for task in tasks}
    output_dir = Path(output_dir)
    policy = RetryPolicy(max_retries=max_retries, backoff_s=backoff_s)
    records = asyncio.run(_ask_all(endpoints, tasks, items, output_dir, settings, policy, progress, extractor))
    results = summarise(endpoints, tasks, items, records, asdict(settings), extractor)
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


async def _ask_all(endpoints, tasks, items, output_dir, settings, policy, progress, extractor) -> dict:
    """records[endpoint.key][task.name][item_id] -> the record (ok or error) for every item."""
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    records = {}
    async with httpx.AsyncClient(timeout=settings.timeout_s, limits=limits) as client:
        for endpoint in endpoints:
            for task in tasks:
                path = output_dir / "records" / endpoint.key / f"{task.name}.jsonl"
                extraction = None
                if extractor is not None and task.uses_extractor:
                    extracted = path.with_name(f"{task.name}.extracted-{extractor.key}.jsonl")
                    extraction = Extraction(extractor, RecordFile(extracted))
                records.setdefault(endpoint.key, {})[task.name] = await _ask_task(
                    client, endpoint, task, items[task.name], RecordFile(path), settings, policy, progress,
                    extraction)
    return records


async def _ask_task(client, endpoint: Endpoint, task: Task, items: list[EvalItem], file: RecordFile,
                    settings: RunSettings, policy: RetryPolicy, progress: bool,
                    extraction: Extraction | None) -> dict[str, dict]:
    bodies = {item.item_id: {"messages": item.messages, "max_tokens": task.max_tokens,
                             "temperature": settings.temperature, "seed": settings.seed} for item in items}
    keys = {item_id: request_key(body) for item_id, body in bodies.items()}
    done = file.answered(keys)
    for item in items:  # cached outputs are scored again, so a fixed metric never needs a new request
        if item.item_id in done:
            done[item.item_id].update(_scored(task.score(item, done[item.item_id]["output"])))
    extracted = extraction.file.load() if extraction else {}
    semaphore = asyncio.Semaphore(settings.concurrency)  # shared by the model's and the extractor's requests

    async def ask(item: EvalItem) -> dict:
        async with semaphore:
            try:
                completion = await chat(client, endpoint, bodies[item.item_id], policy)
            except EndpointError as err:
                return _record(item, keys[item.item_id], ERROR, error=str(err), attempts=err.attempts)
        return _record(item, keys[item.item_id], OK, **_answer_fields(completion),
                       **_scored(task.score(item, completion.text)))

    async def settle(item: EvalItem) -> dict:
        """The model's answer (cached, or asked and saved at once, scored by the task's rules), then, with an
        extractor, scored again on the extracted answer."""
        record = done.get(item.item_id)
        if record is None:
            record = await ask(item)
            file.append(record)
        if extraction is None or record["status"] == ERROR:
            return record
        return await _extract(client, extraction, extracted, task, item, record, semaphore, policy)

    bar = tqdm(total=len(items), desc=f"{endpoint.describe()} {task.name}", unit="item", disable=not progress)
    settled = {}
    with file, bar, extraction.file if extraction else contextlib.nullcontext():
        for answer in asyncio.as_completed([settle(item) for item in items]):
            record = await answer
            settled[record["item_id"]] = record
            bar.update()
            bar.set_postfix_str(_running(settled.values()), refresh=False)
    return {item.item_id: settled[item.item_id] for item in items}


async def _extract(client, extraction: Extraction, cached: dict[str, dict], task: Task, item: EvalItem,
                   record: dict, semaphore: asyncio.Semaphore, policy: RetryPolicy) -> dict:
    """`record` scored on the extractor's reply, which is asked once per response and extractor and cached.
    Responses the quick rules read keep their rule score (the extraction would be the same); an extractor that
    fails after the retries makes the item an error, like a model that fails, not a wrong answer."""
    prompt = task.extractor_prompt(item, record["output"])
    if prompt is None:
        return record
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": EXTRACTOR_MAX_TOKENS,
            "temperature": 0.0}
    key = request_key({"extractor": extraction.endpoint.key, **body})
    reply = cached.get(item.item_id)
    if reply is None or reply["status"] != OK or reply["request_key"] != key:
        reply = await _ask_extractor(client, extraction.endpoint, body, key, item, semaphore, policy)
        extraction.file.append(reply)
    fields = {"extractor": reply["extractor"], "extractor_output": reply["output"]}
    if reply["status"] == ERROR:
        return record | fields | {"status": ERROR, "error": f"extractor: {reply['error']}"}
    return record | fields | _scored(task.score_extracted(item, reply["output"].strip()))


async def _ask_extractor(client, extractor: Endpoint, body: dict, key: str, item: EvalItem,
                         semaphore: asyncio.Semaphore, policy: RetryPolicy) -> dict:
    """The extractor's cache record: its raw reply (or error), and which extractor gave it."""
    reply = {"item_id": item.item_id, "request_key": key, "extractor": f"{extractor.model} at {extractor.chat_url}"}
    async with semaphore:
        try:
            completion = await chat(client, extractor, body, policy)
        except EndpointError as err:
            return reply | {"status": ERROR, "output": None, "error": str(err), "attempts": err.attempts}
    return reply | {"status": OK, "output": completion.text, "error": None, "attempts": completion.attempts}


def _scored(score: Score) -> dict:
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
