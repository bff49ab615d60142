"""Levenshtein edit distance, the one string distance our metrics share (ANLS, MathVista's choice matching).

Written out here rather than taken from python-Levenshtein so the metrics stay dependency-free; answers are
short, so the plain O(len(a) * len(b)) dynamic programme is fast enough.
"""


def levenshtein(a: str, b: str) -> int:
    """The minimum number of single-character insertions, deletions and substitutions turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:i-1] to every prefix of b
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]
