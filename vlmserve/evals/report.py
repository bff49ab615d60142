"""Write the results: results.json (everything), report.md (for people) and chart_<task>.png per task."""

import json
from collections import Counter
from pathlib import Path

from vlmserve.evals.chart import plot_task

MAX_DISAGREEMENTS_SHOWN = 50  # report.md only; results.json lists them all


def write_report(results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    for name, task in results["tasks"].items():
        plot_task(name, task, output_dir / chart_name(name))
    (output_dir / "report.md").write_text(render(results))


def chart_name(task_name: str) -> str:
    return f"chart_{task_name}.png"


def render(results: dict) -> str:
    lines = ["# Evaluation report", ""] + _preamble(results) + _summary(results) + _totals(results)
    for name, task in results["tasks"].items():
        lines += _task_section(name, task)
    return "\n".join(lines) + "\n"


def _preamble(results: dict) -> list[str]:
    s = results["settings"]
    return [
        *_table(["Endpoint", "Model", "URL"], [[e["label"], e["model"], e["url"]] for e in results["endpoints"]]),
        "",
        f"Requests: temperature {s['temperature']}, seed {s['seed']}, the task's max_tokens, up to "
        f"{s['max_retries']} retries; " + (f"the first {s['limit']} items of each task." if s["limit"] is not None
                                             else "every item of each task."),
        "Scores are percentages with 95% percentile-bootstrap intervals (1000 resamples, seed 0). Requests that "
        "failed after the retries are errors: left out of the score, counted apart, asked again on the next run.",
        "Model-card figures are Meta's published Llama 3.2 Vision results, for reference. Where the split we "
        "ran differs from the card's, our number is a local validation figure, not directly comparable.",
        "",
    ]


def _summary(results: dict) -> list[str]:
    labels = [e["label"] for e in results["endpoints"]]
    rows = []
    for name, task in results["tasks"].items():
        split = task["split"] if task["comparable_to_card"] else f"{task['split']} (local; card: {task['card_split']})"
        cards = "; ".join(f"{model.removeprefix('Llama 3.2 ')} {score:.1f}"
                          for model, score in task["reference_scores_pct"].items())
        rows.append([name, split, task["num_items"], *[_score(task["endpoints"][label]) for label in labels], cards])
    header = ["Task", "Split", "Items", *labels, "Llama 3.2 model card"]
    return ["## Summary", "", *_table(header, rows), ""]


def _totals(results: dict) -> list[str]:
    rows = [[label, t["num_errors"], t["prompt_tokens"], t["completion_tokens"], _cost(t["cost_usd"]),
             _latency(t["latency_s"])] for label, t in results["totals"].items()]
    header = ["Endpoint", "Errors", "Prompt tokens", "Completion tokens", "Cost (USD)", "Latency p50 / p90 / p99 (s)"]
    return ["## Totals per endpoint", "", *_table(header, rows), ""]


def _task_section(name: str, task: dict) -> list[str]:
    lines = [f"## {name}", "", f"{task['description'].rstrip('.')}. Metric: {task['metric']}; split: "
             f"{task['split']}; {task['num_items']} items; answer extraction: {task['extraction']}.", ""]
    if not task["comparable_to_card"]:
        lines += [f"> Local validation numbers on `{task['split']}`; the model card reports `{task['card_split']}`, "
                  "so they are not directly comparable.", ""]
    lines += [f"Prompt template (max_tokens {task['max_tokens']}):", "", "```text", task["prompt_template"], "```", "",
              f"![{name}]({chart_name(name)})", ""]
    rows = [[label, _pct(e["score_pct"]), _ci(e["ci95_pct"]), e["num_scored"], e["num_errors"],
             f"{e['num_parse_failed']} ({_rate(e['parse_failure_rate'])})", e["num_truncated"],
             f"{e['prompt_tokens']} / {e['completion_tokens']}", _latency(e["latency_s"]), _cost(e["cost_usd"])]
            for label, e in task["endpoints"].items()]
    lines += _table(["Endpoint", "Score", "95% CI", "Scored", "Errors", "Parse failures", "Truncated",
                     "Tokens in / out", "Latency p50 / p90 / p99 (s)", "Cost (USD)"], rows) + [""]
    for label, e in task["endpoints"].items():
        if e["extra_scores_pct"]:
            lines += [f"Secondary metrics for {label}: "
                      + ", ".join(f"{name} {value:.1f}" for name, value in e["extra_scores_pct"].items()), ""]
        if e["error_examples"]:
            lines += [f"Errors from {label}: " + "; ".join(f"`{_cell(m, 160)}`" for m in e["error_examples"]), ""]
    return lines + _comparisons(task) + _disagreements(task)


def _comparisons(task: dict) -> list[str]:
    if not task["comparisons"]:
        return []
    rows = [[c["a"], c["b"], c["num_paired"], c["both_right"], c["a_only_right"], c["b_only_right"], c["both_wrong"],
             f"{_pct(c['difference_pct'])} {_ci(c['difference_ci95_pct'])}", f"{c['mcnemar_p']:.4g}",
             c["mcnemar_method"]] for c in task["comparisons"]]
    header = ["A", "B", "Paired items", "Both right", "Only A right", "Only B right", "Both wrong",
              "A − B [95% CI]", "McNemar p", "Test"]
    return ["### Paired comparison", "",
            "McNemar's test on the items both endpoints answered; an item counts as right when its score is at "
            "least 0.5 (for 0/1 metrics, when it is right).", "", *_table(header, rows), ""]


def _disagreements(task: dict) -> list[str]:
    if not task["comparisons"]:  # a single endpoint has no one to disagree with
        return []
    labels, disagreements = list(task["endpoints"]), task["disagreements"]
    shown = disagreements[:MAX_DISAGREEMENTS_SHOWN]
    rows = [[d["item_id"], _gold(d["answers"]),
             *[f"{_cell(d['endpoints'][label]['extracted'], 40)} ({d['endpoints'][label]['score']:.2f})"
               for label in labels]] for d in shown]
    note = f"; the first {len(shown)} shown, all in results.json" if len(shown) < len(disagreements) else ""
    lines = ["### Disagreements", "", f"{len(disagreements)} items where the endpoints' scores differ{note}. "
             "Each cell: the extracted answer (score).", ""]
    return lines + (_table(["Item", "Gold", *labels], rows) if rows else []) + [""]


def _gold(answers: list[str]) -> str:
    """VQA's ten annotator answers as "red ×6, dark red ×3, purple"."""
    counts = Counter(answers)
    return _cell(", ".join(f"{a} ×{n}" if n > 1 else a for a, n in counts.most_common()), 80)


def _table(header: list, rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _cell(value, width: int = 200) -> str:
    text = "—" if value is None else str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def _score(summary: dict) -> str:
    return f"{_pct(summary['score_pct'])} {_ci(summary['ci95_pct'])}" if summary["score_pct"] is not None else "—"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def _rate(rate: float | None) -> str:
    return "—" if rate is None else f"{100 * rate:.1f}%"


def _cost(cost: float | None) -> str:
    return "not reported" if cost is None else f"{cost:.4f}"


def _latency(latency: dict | None) -> str:
    return "—" if latency is None else " / ".join(f"{latency[p]:.2f}" for p in ("p50", "p90", "p99"))
