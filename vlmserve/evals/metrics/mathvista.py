"""MathVista answer extraction and scoring, after lupantech/MathVista `evaluation/extract_answer.py` and
`evaluation/calculate_score.py` (research/evals.md §4.4).

The official extractor asks an LLM for the answer whenever its quick rules fail. `extract_mathvista_answer`
keeps the quick rules and replaces the LLM by fixed rules, so it runs offline and deterministically; a score
it produces must be labelled "rule-based extraction", not compared with LLM-extracted figures as equals.
"""

import re

from vlmserve.evals.metrics.answer_text import answer_after
from vlmserve.evals.metrics.edit_distance import levenshtein
from vlmserve.evals.metrics.multiple_choice import mmmu_choices, parse_multi_choice_response

_QUOTED_ANSWER = re.compile(r'The answer is "(.*)"\.')
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_MARKER = re.compile(r"\banswer\s*(?::|is\b:?)", re.IGNORECASE)
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?")
_BRACKETED_LETTER = re.compile(r"\(([a-zA-Z])\)")


def _is_number(text: str, kind: type) -> bool:
    try:
        kind(text)
        return True
    except ValueError:
        return False


def _to_integer_text(text: str) -> str | None:
    try:
        return str(int(float(text)))
    except (ValueError, OverflowError):  # not a number, or nan / inf
        return None


def _answer_text(response: str) -> str:
    """Where the answer is stated: the last \\boxed{...}, else the line after the last "answer:" or
    "answer is", else the whole response."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    found = answer_after(response, _ANSWER_MARKER)
    return response if not found else found


def quick_mathvista_answer(
    response: str, question_type: str, answer_type: str, choices: list[str] | None = None
) -> str | None:
    """The official extractor's first rules, applied before it asks its LLM: "" for an empty response; the
    response itself when it is exactly one of the choices (multi_choice) or reads as an int (integer) or a
    float (float, returned as str(float)). None when none applies: the answer has to be looked for."""
    if question_type == "multi_choice" and not choices:
        raise ValueError("a multi_choice MathVista question needs its choices")
    if response == "":
        return ""
    if question_type == "multi_choice" and response in choices:
        return response
    if answer_type == "integer" and _is_number(response, int):
        return str(int(response))
    if answer_type == "float" and _is_number(response, float):
        return str(float(response))
    return None


def extract_mathvista_answer(
    response: str,
    question_type: str,
    answer_type: str,
    choices: list[str] | None = None,
    precision: float | None = None,
) -> str | None:
    """The answer in a response, or None when the rules find none (count that wrong).

    Official quick rules, in order: `quick_mathvista_answer`, then the text in `The answer is "..."`. Our
    rules in place of the LLM: take the last \\boxed{...}, else the line after the last "answer:"/"answer
    is", else the whole response; for multi_choice, parse an option letter out of it with MMMU's parser
    (None if it would have to guess); for integer and float, its last number (thousands commas removed);
    otherwise that text without a final period. `precision` is accepted for symmetry with `mathvista_correct`
    and, as in the official extractor, not used.
    """
    quick = quick_mathvista_answer(response, question_type, answer_type, choices)
    if quick is not None:
        return quick
    quoted = _QUOTED_ANSWER.search(response)
    if quoted:
        return quoted.group(1)
    text = _answer_text(response)
    if question_type == "multi_choice":
        letter, failed = parse_multi_choice_response(text, *mmmu_choices(choices))
        return None if failed else letter
    if answer_type in ("integer", "float"):
        numbers = _NUMBER.findall(_THOUSANDS_COMMA.sub("", text))
        return numbers[-1] if numbers else None
    return text.strip().rstrip(".").strip() or None


def normalize_mathvista_answer(
    extraction: str, choices: list[str] | None, question_type: str, answer_type: str, precision: float | None
) -> str | None:
    """The official `normalize_extracted_answer`, which makes an extraction comparable with the gold string.

    multi_choice: strip; "(B) text" -> "B"; a letter within range -> that choice's text; anything else ->
    the choice nearest by edit distance (the first on a tie; so every extraction, "" included, maps to
    some choice). integer: str(int(float(x))) (truncates), or None. float: str(round(float(x), precision)),
    or None. list: str(x). Other answer types (text) are left as they are.
    """
    if question_type == "multi_choice":
        if not choices:
            raise ValueError("a multi_choice MathVista question needs its choices")
        extraction = extraction.strip()
        letters = _BRACKETED_LETTER.findall(extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        distances = [levenshtein(extraction, choice) for choice in choices]
        return choices[distances.index(min(distances))]
    if answer_type == "integer":
        return _to_integer_text(extraction)
    if answer_type == "float":
        if precision is None:
            raise ValueError("a float MathVista answer needs its precision")
        return str(round(float(extraction), int(precision))) if _is_number(extraction, float) else None
    return str(extraction)


def mathvista_correct(
    extracted: str | None,
    gold: str,
    answer_type: str,
    precision: float | None = None,
    *,
    question_type: str = "free_form",
    choices: list[str] | None = None,
) -> bool:
    """Whether an extraction answers the question: normalised by `normalize_mathvista_answer`, then
    compared for plain equality with the gold `answer` string, as the official `safe_equal` does. A None
    extraction (nothing found) is wrong."""
    if extracted is None:
        return False
    return normalize_mathvista_answer(extracted, choices, question_type, answer_type, precision) == gold
