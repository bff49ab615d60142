"""The benchmark registry: every task variant by name, as `vlmserve eval --task` spells it."""

from vlmserve.evals.tasks.ai2d import AI2D
from vlmserve.evals.tasks.base import EvalItem, Score, Task
from vlmserve.evals.tasks.chartqa import ChartQA
from vlmserve.evals.tasks.docvqa import DocVQA
from vlmserve.evals.tasks.infovqa import InfographicVQA
from vlmserve.evals.tasks.mathvista import MathVista
from vlmserve.evals.tasks.mmmu import MMMU
from vlmserve.evals.tasks.textvqa import TextVQA
from vlmserve.evals.tasks.vqav2 import VQAv2

TASKS: dict[str, Task] = {task.name: task for task in (
    VQAv2(), TextVQA(), DocVQA(), InfographicVQA(),
    ChartQA("chartqa"), ChartQA("chartqa_cot"), ChartQA("chartqa_cot_90b"),
    AI2D(cot=False), AI2D(cot=True), MMMU(cot=False), MMMU(cot=True), MathVista(),
)}


def get_task(name: str) -> Task:
    """The task called `name`; a ValueError lists the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown eval task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "EvalItem", "Score", "Task", "get_task"]
