"""ANLS, the Average Normalized Levenshtein Similarity of DocVQA and InfographicVQA, as the RRC scoring
script computes it (mirrored by lmms-eval and VLMEvalKit), which differs from the paper in two places
noted below (research/evals.md §2)."""

from vlmserve.evals.metrics.edit_distance import levenshtein


def _squash(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """The ANLS score of one prediction, in [0, 1]: the best similarity 1 - NL over the ground-truth answers,
    set to 0 when below `threshold`. The dataset score is the mean over questions.

    NL is the edit distance between the lowercased, stripped, whitespace-collapsed strings, divided by the
    longer of the two *raw* strings' lengths (the RRC code's denominator, `len(s.upper())`; the paper's
    normalised lengths differ only when whitespace was collapsed). Punctuation is kept. A similarity of
    exactly `threshold` is kept, as in the RRC code ("abcd" vs "abef" scores 0.5; the paper's "NL < τ"
    would give 0). Two empty strings count as identical.
    """
    if not answers:
        raise ValueError("anls needs at least one ground-truth answer, got none")
    squashed = _squash(prediction)
    distances = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(_squash(answer), squashed) / length)
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score
