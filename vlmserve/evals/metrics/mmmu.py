"""MMMU open-answer parsing and scoring, and the MMMU score, as in the official
MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py` (research/evals.md §4.1). Multiple-choice questions are
parsed by `multiple_choice.parse_multi_choice_response`."""

import ast
import re
from collections import defaultdict

# A tail after one of these is where an open answer usually sits ("... so the answer is 42").
_KEY_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
_TRIVIAL_TAILS = {":", ",", ".", "!", "?", ";", "'"}
# Officially the split runs on the lowercased text, so the "[A-Z]" look-ahead never fires and responses
# split on newlines only; kept for fidelity.
_SUB_RESPONSE_SPLIT = re.compile(r"\.\s(?=[A-Z])|\n")
_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_SUBJECT_ID = re.compile(r"^[^_]+_(.+?)_\d+$")


def _shortest_key_tail(sub_response: str, indicators: list[str]) -> str | None:
    """The shortest stripped text after the last occurrence of any indicator. As officially, an empty tail
    counts as none found yet, so a later, longer tail replaces it."""
    shortest = None
    for indicator in indicators:
        if indicator in sub_response:
            tail = sub_response.split(indicator)[-1].strip()
            if not shortest or len(tail) < len(shortest):
                shortest = tail
    return shortest


def _key_sub_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    sub_responses = _SUB_RESPONSE_SPLIT.split(response)
    key_responses = []
    for index, sub_response in enumerate(sub_responses):
        # the last sub-response may also be an equation: "x = 42"
        indicators = _KEY_INDICATORS + ["="] if index == len(sub_responses) - 1 else _KEY_INDICATORS
        tail = _shortest_key_tail(sub_response, indicators)
        if tail and tail not in _TRIVIAL_TAILS:
            key_responses.append(tail)
    return key_responses or [response]


def _extract_numbers(text: str) -> list[str]:
    """Comma-grouped numbers, then scientific notation, then plain numbers, in that order."""
    return _NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text) + _NUMBER_SIMPLE.findall(text)


def normalize_str(text: str) -> list[str | float]:
    """MMMU's normalisation of one answer: a number (commas ignored, anything float() reads) becomes the
    float rounded to 2 decimals; other text is lowercased, and a single character c becomes [" c", "c "]
    so that it only matches as a word in `eval_open`'s substring test."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]


def parse_open_response(response: str) -> list[str | float]:
    """The candidate answers in an open-question response: the key tails (the shortest text after "so ",
    "is ", "therefore ", "answer ", ... in each line, "=" in the last line; the whole response if none),
    every number in them, each normalised by `normalize_str`, duplicates removed.

    Officially the duplicates are removed with a set, which scores the same; we keep first-occurrence order
    so that the list is reproducible.
    """
    key_responses = _key_sub_responses(response)
    raw = key_responses + [number for key in key_responses for number in _extract_numbers(key)]
    return list(dict.fromkeys(value for text in raw for value in normalize_str(text)))


def eval_open(gold: str | list[str], predictions: list[str | float]) -> bool:
    """Whether an open question was answered: some string prediction contains some normalised gold string,
    or some float prediction equals some normalised gold number. `predictions` is `parse_open_response`'s
    output. A gold answer given as a Python-literal list string ("['24', '24.0']"), as the MMMU data stores
    some, is read with ast.literal_eval."""
    if isinstance(gold, str) and gold.strip().startswith("["):
        gold = ast.literal_eval(gold.strip())
    golds = [value for answer in (gold if isinstance(gold, list) else [gold]) for value in normalize_str(str(answer))]
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(answer, str) and answer in prediction for answer in golds):
                return True
        elif prediction in golds:
            return True
    return False


def mmmu_subject(sample_id: str) -> str:
    """The subject in an MMMU id: "validation_Art_Theory_12" -> "Art_Theory"."""
    match = _SUBJECT_ID.match(sample_id)
    if match is None:
        raise ValueError(f"not an MMMU id of the form '<split>_<Subject>_<n>': {sample_id!r}")
    return match.group(1)


def mmmu_score(results: list[tuple[str, bool]]) -> dict[str, float]:
    """Accuracy per subject and "Overall" from (sample id, correct) pairs. Overall is the official
    instance-level (micro) average, Σ acc_s·n_s / Σ n_s = total correct / total, the figure the model
    card quotes."""
    if not results:
        raise ValueError("mmmu_score needs at least one result, got none")
    by_subject = defaultdict(list)
    for sample_id, correct in results:
        by_subject[mmmu_subject(sample_id)].append(correct)
    scores = {subject: sum(values) / len(values) for subject, values in sorted(by_subject.items())}
    scores["Overall"] = sum(correct for _, correct in results) / len(results)
    return scores
