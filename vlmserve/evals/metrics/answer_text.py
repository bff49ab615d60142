"""Finding the answer inside a chain-of-thought response: the line after a final-answer marker, else the
last line. Shared by ChartQA's "FINAL ANSWER:" extractor and MathVista's rule-based extractor."""

import re


def answer_after(text: str, marker: re.Pattern) -> str | None:
    """The first non-empty line after the last match of `marker`, stripped; "" when nothing follows it;
    None when the marker never occurs. Markdown bold ("**") is removed first, so "**FINAL ANSWER:** 12"
    is found like "FINAL ANSWER: 12"."""
    text = text.replace("**", "")
    matches = list(marker.finditer(text))
    if not matches:
        return None
    lines = [line.strip() for line in text[matches[-1].end():].splitlines() if line.strip()]
    return lines[0] if lines else ""


def last_line(text: str) -> str:
    """The last non-empty line of `text`, stripped (markdown bold removed); "" for blank text."""
    lines = [line.strip() for line in text.replace("**", "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
