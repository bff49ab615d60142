"""Reading an option letter out of a free-form response, as MMMU's official parser does
(MMMU-Benchmark/MMMU `mmmu/utils/eval_utils.py`), plus the MMMU-Pro variant (`mmmu-pro/evaluate.py`).

AI2D's multiple-choice accuracy uses this same parser: pass its option labels as `all_choices` (letters, or
the option numbers Meta's prompts ask for) and the option texts as `index2ans`.

The official parser guesses with `random.choice` when it finds no option, from a module-wide
`random.seed(42)`, so a guess depends on how many guesses came before it. Ours is a pure function of the
response (or of a seed the caller passes) and says when it guessed, so the guess rate can be reported and a
guess can be counted wrong.
"""

import hashlib

# Stripped from both ends of a response one after another, in this order, as officially.
_EDGE_PUNCTUATION = [",", ".", "!", "?", ";", ":", "'"]


def mmmu_choices(options: list[str]) -> tuple[list[str], dict[str, str]]:
    """(all_choices, index2ans) for options listed in order: (["A", "B"], {"A": options[0], "B": options[1]})."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    return letters, dict(zip(letters, options))


def _fallback_choice(all_choices: list[str], key: str) -> str:
    """A uniform pick from the first 8 bytes of SHA-256(key): stable across runs, processes and Python
    versions, unlike `hash()` or a shared random stream."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return all_choices[int.from_bytes(digest[:8], "big") % len(all_choices)]


def _candidates(response: str, all_choices: list[str], index2ans: dict[str, str], loose: bool):
    """The matching options, and the string whose last occurrence ranks each of them."""
    bracketed = [choice for choice in all_choices if f"({choice})" in response]
    if bracketed:
        return bracketed, lambda choice: response.rfind(f"({choice})")
    if loose:
        bare = [choice for choice in all_choices if f"{choice} " in response]
        bare = bare or [choice for choice in all_choices if f"{choice}." in response]
    else:
        bare = [choice for choice in all_choices if f" {choice} " in response]
    if bare:
        # the official ranking looks for " X " even when " X " was not how the loose test matched
        return bare, lambda choice: response.rfind(f" {choice} ")
    if len(response.split()) > 5:
        lowered = response.lower()
        by_text = [index for index, text in index2ans.items() if text.lower() in lowered]
        return by_text, lambda choice: lowered.rfind(index2ans[choice].lower())
    return [], None


def parse_multi_choice_response(
    response: str,
    all_choices: list[str],
    index2ans: dict[str, str],
    rng_seed: int | str | None = None,
    *,
    loose: bool = False,
) -> tuple[str, bool]:
    """The option a response picks, and whether it was a guess: (letter, parse_failed).

    Official MMMU steps: strip , . ! ? ; : ' from both ends and pad with a space on each side; the
    candidates are the options written "(X)"; failing that, those standing alone as " X " (so "A", "A."
    and "the answer is A" all give A, but "A. Paris" does not); failing that, and only in a response of
    more than five words, those whose option text occurs in it (any case). Several candidates: the one
    whose last occurrence comes latest wins (the first listed on a tie). `loose=True` replaces the " X "
    test by MMMU-Pro's "X " then "X." tests, which also match inside words ("USA " gives A).

    No candidate: a deterministic guess, uniform over `all_choices`, keyed by SHA-256 of `rng_seed` when
    given (e.g. a sample id) or else of the response itself, returned with parse_failed=True.
    """
    if not all_choices:
        raise ValueError("parse_multi_choice_response needs at least one choice, got none")
    padded = response
    for mark in _EDGE_PUNCTUATION:
        padded = padded.strip(mark)
    padded = f" {padded} "
    candidates, last_position = _candidates(padded, all_choices, index2ans, loose)
    if not candidates:
        return _fallback_choice(all_choices, response if rng_seed is None else str(rng_seed)), True
    return max(candidates, key=last_position), False


def parse_mmmu_pro_response(
    response: str, all_choices: list[str], index2ans: dict[str, str], rng_seed: int | str | None = None
) -> tuple[str, bool]:
    """MMMU-Pro's official parser: if exactly one option letter occurs anywhere in the text after the last
    "Answer:" (case-sensitive), that letter; otherwise the MMMU parser with its loose letter tests."""
    position = response.rfind("Answer:")
    if position != -1:
        tail = response[position + len("Answer:"):].strip()
        found = [choice for choice in all_choices if choice in tail]
        if len(found) == 1:
            return found[0], False
    return parse_multi_choice_response(response, all_choices, index2ans, rng_seed, loose=True)


def eval_multi_choice(gold: str | list[str], prediction: str) -> bool:
    """Exact match with the gold letter, or with any of them when several are accepted."""
    return prediction in gold if isinstance(gold, list) else prediction == gold
