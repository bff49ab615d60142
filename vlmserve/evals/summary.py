"""Turn the answer records into the results: scores with bootstrap intervals, paired comparisons, disagreements,
parse failures, tokens, latency and cost. A pure function of the records, so a report can always be rebuilt.

Scores are percentages (0-100) here, like the model card's. API errors are left out of every score and counted
apart: a failed request says nothing about the model.
"""

from itertools import combinations

from vlmserve.evals.endpoint import Endpoint
from vlmserve.evals.records import ERROR, OK
from vlmserve.evals.stats import bootstrap_ci, mcnemar, percentiles
from vlmserve.evals.tasks.base import EvalItem, Task

# McNemar needs right/wrong: an item counts as right when its score is at least this (the identity for 0/1
# metrics; for VQA accuracy, ANLS and the like it means "at least half credit").
BINARY_THRESHOLD = 0.5


def endpoint_labels(endpoints: list[Endpoint]) -> dict[str, str]:
    """endpoint.key -> the name shown in the report: the model name, or model@host:port where two share it."""
    models = [endpoint.model for endpoint in endpoints]
    return {e.key: e.model if models.count(e.model) == 1 else e.describe() for e in endpoints}


def summarise(endpoints: list[Endpoint], tasks: list[Task], items: dict[str, list[EvalItem]],
              records: dict[str, dict[str, dict[str, dict]]], settings: dict,
              extractor: Endpoint | None = None) -> dict:
    """records[endpoint.key][task.name][item_id] -> record. Returns the dict written to results.json."""
    labels = endpoint_labels(endpoints)
    by_task = {task.name: {labels[e.key]: [records[e.key][task.name][item.item_id] for item in items[task.name]]
                           for e in endpoints} for task in tasks}
    return {
        "settings": settings,
        "binary_threshold": BINARY_THRESHOLD,
        "endpoints": [{"label": labels[e.key], "url": e.chat_url, "model": e.model, "records": f"records/{e.key}"}
                      for e in endpoints],
        "tasks": {task.name: _task(task, len(items[task.name]), by_task[task.name], extractor) for task in tasks},
        "totals": {label: _usage([r for task in tasks for r in by_task[task.name][label]])
                   for label in labels.values()},
    }


def extraction_method(task: Task, extractor: Endpoint | None) -> str:
    """How the task's answers were extracted: scores from different extractors are not comparable."""
    if extractor is None or not task.uses_extractor:
        return "rules"
    return f"LLM extractor {extractor.model} at {extractor.chat_url}"


def _task(task: Task, num_items: int, by_label: dict[str, list[dict]], extractor: Endpoint | None) -> dict:
    return {
        "description": task.description, "metric": task.metric,
        "extraction": extraction_method(task, extractor), "split": task.split, "card_split": task.card_split,
        "comparable_to_card": task.split == task.card_split, "layout": task.layout,
        "prompt_template": task.prompt_template, "max_tokens": task.max_tokens, "num_items": num_items,
        "reference_scores_pct": dict(task.reference_scores),
        "endpoints": {label: _scores(records) | _usage(records) for label, records in by_label.items()},
        "comparisons": [_compare(a, by_label[a], b, by_label[b]) for a, b in combinations(by_label, 2)],
        "disagreements": _disagreements(by_label),
    }


def _scores(records: list[dict]) -> dict:
    ok = [r for r in records if r["status"] == OK]
    scores = [r["score"] for r in ok]
    ci = bootstrap_ci(scores) if scores else None
    parse_failed = sum(bool(r["parse_failed"]) for r in ok)
    names = dict.fromkeys(name for r in ok for name in r["extra_scores"])
    extra = {name: [r["extra_scores"][name] for r in ok if name in r["extra_scores"]] for name in names}
    return {
        "score_pct": 100 * sum(scores) / len(scores) if scores else None,
        "ci95_pct": [100 * ci[0], 100 * ci[1]] if ci else None,
        "extra_scores_pct": {name: 100 * sum(values) / len(values) for name, values in extra.items()},
        "num_scored": len(ok),
        "num_parse_failed": parse_failed,
        "parse_failure_rate": parse_failed / len(ok) if ok else None,
        "num_truncated": sum(r["finish_reason"] == "length" for r in ok),
    }


def _usage(records: list[dict]) -> dict:
    ok = [r for r in records if r["status"] == OK]
    errors = [r["error"] for r in records if r["status"] == ERROR]
    costs = [r["cost"] for r in ok if r["cost"] is not None]
    return {
        "num_errors": len(errors),
        "error_examples": list(dict.fromkeys(errors))[:3],
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in ok),
        "completion_tokens": sum(r["completion_tokens"] or 0 for r in ok),
        "cost_usd": sum(costs) if costs else None,  # None: the endpoint reports no usage.cost
        "latency_s": percentiles([r["latency_s"] for r in ok]),
    }


def _compare(a: str, records_a: list[dict], b: str, records_b: list[dict]) -> dict:
    """McNemar on the items both endpoints answered, plus the paired score difference a - b with its interval."""
    pairs = [(ra["score"], rb["score"]) for ra, rb in zip(records_a, records_b)
             if ra["status"] == OK and rb["status"] == OK]
    right = [(sa >= BINARY_THRESHOLD, sb >= BINARY_THRESHOLD) for sa, sb in pairs]
    test = mcnemar(b=sum(ra and not rb for ra, rb in right), c=sum(rb and not ra for ra, rb in right))
    differences = [sa - sb for sa, sb in pairs]
    ci = bootstrap_ci(differences) if differences else None
    return {
        "a": a, "b": b, "num_paired": len(pairs),
        "both_right": sum(ra and rb for ra, rb in right), "a_only_right": test.b, "b_only_right": test.c,
        "both_wrong": sum(not ra and not rb for ra, rb in right),
        "mcnemar_p": test.p_value, "mcnemar_method": test.method, "mcnemar_statistic": test.statistic,
        "difference_pct": 100 * sum(differences) / len(differences) if differences else None,
        "difference_ci95_pct": [100 * ci[0], 100 * ci[1]] if ci else None,
    }


def _disagreements(by_label: dict[str, list[dict]]) -> list[dict]:
    """Items every endpoint answered whose scores are not all the same, in item order."""
    rows = []
    for records in zip(*by_label.values()):
        if len(by_label) < 2 or any(r["status"] != OK for r in records) or len({r["score"] for r in records}) == 1:
            continue
        rows.append({"item_id": records[0]["item_id"], "answers": records[0]["answers"],
                     "endpoints": {label: {"extracted": r["extracted"], "score": r["score"]}
                                   for label, r in zip(by_label, records)}})
    return rows
