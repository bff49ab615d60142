"""What a benchmark is to the runner: items to send (OpenAI chat messages with gold answers) and a scorer.

Tasks are pure: `load` reads local files, `score` is a function of one item and one output, so stored outputs can
be re-scored without re-querying an endpoint.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vlmserve.evals.data import DataError, EncodedImage, SplitFiles, encode_image, find_split


@dataclass(frozen=True)
class EvalItem:
    item_id: str  # stable across runs: the dataset's id column, else a hash of question and images
    messages: list[dict]  # OpenAI chat messages, image parts before the text (Llama 3.2 attends image -> later text)
    answers: list[str]  # gold answer(s) as the dataset gives them
    meta: dict  # task-specific: choices, answer_type, question_type, precision, subject, ...
    image_hashes: list[str]  # sha256 hex of each image's bytes as sent


@dataclass(frozen=True)
class Score:
    value: float  # 0..1 for this item: the task's headline metric
    extracted: str | None  # the answer parsed from the output (None if none)
    parse_failed: bool  # the parser fell back or found nothing
    extra: dict[str, float] = field(default_factory=dict)  # secondary metrics, averaged like `value`


class Task:
    """One benchmark variant. Subclasses set the attributes and implement `rows`, `make_item` and `score`."""

    name: str
    description: str
    metric: str
    split: str  # the split we evaluate
    card_split: str  # the split of the model card's figure, to label local numbers
    layout: str  # the files and columns the data directory must hold
    prompt_template: str  # the text part; the image part(s) precede it
    max_tokens: int
    reference_scores: dict[str, float]  # model-card figures in percent
    config: str | None = None  # the sub-folder of a multi-config HF repository, used when present
    uses_extractor = False  # whether an LLM answer extractor, when one is given, extracts this task's answers

    def load(self, data_dir: Path, limit: int | None = None) -> list[EvalItem]:
        """All items of the split (the first `limit`); raises `DataError` naming what is missing."""
        return list(self.iter_items(data_dir, limit))

    def iter_items(self, data_dir: Path, limit: int | None = None) -> Iterator[EvalItem]:
        """Items one at a time, for callers that do not want every encoded image in memory at once."""
        files = find_split(Path(data_dir), self.split, self.layout, self.config)
        seen: dict[str, int] = {}
        for row in self.rows(files, limit):
            item = self.make_item(row)
            # Hash ids repeat when a dataset asks the same question of the same image twice (ChartQA does);
            # numbering the repeats in file order keeps every id unique and stable.
            seen[item.item_id] = seen.get(item.item_id, 0) + 1
            if seen[item.item_id] > 1:
                item = EvalItem(f"{item.item_id}-{seen[item.item_id]}", item.messages, item.answers, item.meta,
                                item.image_hashes)
            yield item

    def rows(self, files: SplitFiles, limit: int | None) -> Iterator[dict]:
        raise NotImplementedError

    def make_item(self, row: dict) -> EvalItem:
        raise NotImplementedError

    def score(self, item: EvalItem, output: str) -> Score:
        raise NotImplementedError

    def extractor_prompt(self, item: EvalItem, output: str) -> str | None:
        """For tasks that use an extractor: the prompt asking it for the answer in `output`, or None where the
        task's quick rules already read the answer (then `score` gives the same result without a request)."""
        raise NotImplementedError

    def score_extracted(self, item: EvalItem, extraction: str) -> Score:
        """For tasks that use an extractor: the score of the answer it extracted."""
        raise NotImplementedError


def user_message(images: list[EncodedImage], text: str) -> list[dict]:
    """One user turn: every image first, in order, then the prompt text."""
    parts = [{"type": "image_url", "image_url": {"url": image.url}} for image in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def hashed_item_id(question: str, image_hashes: list[str]) -> str:
    """An id for datasets without one: the first 16 hex digits of sha256(question, image hashes)."""
    return hashlib.sha256("\0".join([question, *image_hashes]).encode()).hexdigest()[:16]


def single_image_item(item_id: str | None, image: bytes | None, question: str, text: str, answers: list[str],
                      meta: dict) -> EvalItem:
    """The item of a one-image benchmark; without an id column the id hashes the question and the image."""
    if image is None:
        raise DataError(f"item {item_id or question!r} has no image")
    encoded = encode_image(image)
    item_id = str(item_id) if item_id is not None else hashed_item_id(question, [encoded.sha256])
    return EvalItem(item_id, user_message([encoded], text), answers, meta, [encoded.sha256])
