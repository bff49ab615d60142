"""Per-sample evaluation metrics, re-implemented from each benchmark's official scoring code: pure
functions of a response and its gold answers, so a stored run can be re-scored without re-querying."""

from vlmserve.evals.metrics.anls import anls
from vlmserve.evals.metrics.chartqa import chartqa_final_answer, relaxed_accuracy
from vlmserve.evals.metrics.mathvista import (
    extract_mathvista_answer,
    mathvista_correct,
    normalize_mathvista_answer,
    quick_mathvista_answer,
)
from vlmserve.evals.metrics.mmmu import eval_open, mmmu_score, mmmu_subject, normalize_str, parse_open_response
from vlmserve.evals.metrics.multiple_choice import (
    eval_multi_choice,
    mmmu_choices,
    parse_mmmu_pro_response,
    parse_multi_choice_response,
)
from vlmserve.evals.metrics.vqa import normalize_vqa_answer, vqa_accuracy

__all__ = [
    "anls",
    "chartqa_final_answer",
    "eval_multi_choice",
    "eval_open",
    "extract_mathvista_answer",
    "mathvista_correct",
    "mmmu_choices",
    "mmmu_score",
    "mmmu_subject",
    "normalize_mathvista_answer",
    "normalize_str",
    "normalize_vqa_answer",
    "parse_mmmu_pro_response",
    "parse_multi_choice_response",
    "parse_open_response",
    "quick_mathvista_answer",
    "relaxed_accuracy",
    "vqa_accuracy",
]
