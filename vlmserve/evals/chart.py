"""One bar chart per task: each endpoint's score with its 95% bootstrap interval, beside the model card's figures."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_task(name: str, task: dict, path: Path) -> None:
    """task: one entry of results["tasks"]. Endpoints without a score (every request failed) are drawn empty."""
    labels, heights, lows, highs, colors, hatches = [], [], [], [], [], []
    for i, (label, summary) in enumerate(task["endpoints"].items()):
        score, ci = summary["score_pct"], summary["ci95_pct"]
        labels.append(textwrap.fill(label, 18))
        heights.append(score or 0.0)
        lows.append(score - ci[0] if ci else 0.0)
        highs.append(ci[1] - score if ci else 0.0)
        colors.append(f"C{i}")
        hatches.append("")
    for model, score in task["reference_scores_pct"].items():
        labels.append(textwrap.fill(f"{model} (model card)", 18))
        heights.append(score)
        lows.append(0.0)
        highs.append(0.0)
        colors.append("lightgrey")
        hatches.append("//")

    figure, axes = plt.subplots(figsize=(max(4.0, 1.6 * len(labels)), 4.0))
    bars = axes.bar(range(len(labels)), heights, yerr=[lows, highs], capsize=4, color=colors, edgecolor="black")
    for bar, hatch, height in zip(bars, hatches, heights):
        bar.set_hatch(hatch)
        axes.annotate(f"{height:.1f}", (bar.get_x() + bar.get_width() / 2, height), ha="center", va="bottom",
                      xytext=(0, 2), textcoords="offset points", fontsize=8)
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("score (%)")
    split = task["split"] if task["comparable_to_card"] else f"local {task['split']}; card: {task['card_split']}"
    axes.set_title(f"{name} ({split}, n={task['num_items']})\n" + textwrap.shorten(task["metric"], 90), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
