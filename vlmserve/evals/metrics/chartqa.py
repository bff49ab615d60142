"""ChartQA relaxed accuracy: a numeric answer may be off by 5 % of the target, anything else must match.

The strict form is pix2struct's `relaxed_correctness`, the one lmms-eval and VLMEvalKit copy, so its
numbers compare with theirs. Meta's parser is unpublished and its chain-of-thought answers often read
"1,234" or "$5", which the strict form fails; the lenient form forgives those (research/evals.md §3).
"""

import re

from vlmserve.evals.metrics.answer_text import answer_after, last_line

_FINAL_ANSWER = re.compile(r"final answer\s*:", re.IGNORECASE)
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_MARKDOWN = re.compile(r"[*`]")


def chartqa_final_answer(text: str) -> str:
    """The answer Meta's ChartQA prompts ask for: the first non-empty line after the last "FINAL ANSWER:"
    (any case, markdown bold allowed around it), else the response's last non-empty line."""
    found = answer_after(text, _FINAL_ANSWER)
    return last_line(text) if found is None else found


def _to_float(text: str) -> float | None:
    """pix2struct's reading of a number: "x%" is x / 100; anything float() rejects is not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def _relaxed_strict(prediction: str, target: str, tolerance: float) -> bool:
    prediction_value, target_value = _to_float(prediction), _to_float(target)
    # a zero target is falsy, so it falls through to string equality: "0.0" vs "0" fails
    if prediction_value is not None and target_value:
        return abs(prediction_value - target_value) / abs(target_value) <= tolerance
    return prediction.lower() == target.lower()


def _lenient_form(text: str) -> str:
    text = _MARKDOWN.sub("", text).strip().strip("\"'")
    if any(char.isdigit() for char in text):
        text = _THOUSANDS_COMMA.sub("", text.replace("$", "")).rstrip(".").strip()
    return text


def relaxed_accuracy(prediction: str, target: str, tolerance: float = 0.05, *, lenient: bool = False) -> float:
    """1.0 if `prediction` is relaxed-correct for `target`, else 0.0.

    Strict (default, pix2struct): both sides are read as numbers ("12%" means 0.12, no thousands separators,
    no currency); if both are numbers and the target is non-zero, correct iff |pred - target| / |target|
    <= tolerance; otherwise correct iff the strings are equal ignoring case (no stripping). So "1,234" vs
    "1234", "$5" vs "5", "12%" vs "12" and "0.0" vs "0" all fail.

    Lenient: first drop markdown ("*", "`"), surrounding quotes and whitespace; in text holding a digit also
    drop "$", thousands commas ("1,234" -> "1234") and trailing periods. Then correct if the strict rule
    passes, or if both sides are numbers once a trailing "%" is ignored ("12%" vs "12") and they are within
    tolerance; a zero target then needs a prediction equal to zero.
    """
    if not lenient:
        return float(_relaxed_strict(prediction, target, tolerance))
    prediction, target = _lenient_form(prediction), _lenient_form(target)
    if _relaxed_strict(prediction, target, tolerance):
        return 1.0
    prediction_value = _to_float(prediction.rstrip("%").strip())
    target_value = _to_float(target.rstrip("%").strip())
    if prediction_value is None or target_value is None:
        return 0.0
    if target_value == 0:
        return float(prediction_value == 0)
    return float(abs(prediction_value - target_value) / abs(target_value) <= tolerance)
