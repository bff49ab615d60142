"""MMMU: college-level multiple-choice and open questions over one to seven images, scored like the official
MMMU code (its response parsers, micro average over items)."""

import ast
import re

from vlmserve.evals.data import DataError, SplitFiles, encode_image
from vlmserve.evals.metrics import (
    eval_multi_choice,
    eval_open,
    mmmu_choices,
    mmmu_subject,
    parse_multi_choice_response,
    parse_open_response,
)
from vlmserve.evals.tasks.base import EvalItem, Score, Task, hashed_item_id, user_message

IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))
_PLACEHOLDER = re.compile(r"<image (\d+)>")
# The official MMMU prompts (configs/llava1.5.yaml), used for the direct variant.
DIRECT_CHOICE = "{question}\n\n{options}\n\nAnswer with the option's letter from the given choices directly."
DIRECT_OPEN = "{question}\n\nAnswer the question using a single word or phrase."
# Meta's MMMU CoT prompt (llama-models eval_details.md) without `<|image|>`; open questions have no options.
COT_CHOICE = ("Look at the image carefully and solve the following question step-by-step. {question} "
              "Options: {options} Indicate the correct answer at the end.")
COT_OPEN = ("Look at the image carefully and solve the following question step-by-step. {question} "
            "Indicate the correct answer at the end.")
# An explicit final choice in a CoT answer: "answer is (C)", "Answer: C", "\boxed{C}".
_FINAL_CHOICE = re.compile(r"(?:(?i:answer)[\s:*]*(?:(?i:is)[\s:*]*)?|\\boxed\{)\(?([A-Z])\)?(?![\w])")
_LONE_LETTER = re.compile(r"^\(?([A-Z])\)?\.?$")


class MMMU(Task):
    split = "validation"
    card_split = "validation"
    layout = ("MMMU/MMMU (30 subject folders <Subject>/validation-*.parquet) or lmms-lab/MMMU "
              "(data/validation-*.parquet), or validation.jsonl, with columns id, question, options (list or its "
              "Python literal), answer, image_1; optional question_type, image_2..image_7")

    def __init__(self, cot: bool):
        self.cot = cot
        self.name = "mmmu_cot" if cot else "mmmu"
        self.choice_prompt, self.open_prompt = (COT_CHOICE, COT_OPEN) if cot else (DIRECT_CHOICE, DIRECT_OPEN)
        self.prompt_template = f"multiple-choice: {self.choice_prompt}\nopen: {self.open_prompt}"
        self.description = ("MMMU validation, " + ("Meta's CoT prompt" if cot else "the official MMMU prompts")
                            + "; options as '(A) ...' lines; images first, in order of their <image k> mentions")
        self.metric = ("micro-average accuracy, official MMMU parsers" + (" after an explicit final choice" if cot
                       else "") + "; an unparsed multiple-choice answer is wrong (no random pick)")
        self.max_tokens = 2048 if cot else 128
        self.reference_scores = ({"Llama 3.2 11B Vision Instruct": 50.7, "Llama 3.2 90B Vision Instruct": 60.3}
                                 if cot else {"Llama 3.2 11B Vision base": 41.7, "Llama 3.2 90B Vision base": 49.3})

    def rows(self, files: SplitFiles, limit):
        return files.rows(["id", "question", "options", "answer", "image_1"], ["question_type", *IMAGE_COLUMNS[1:]],
                          images=IMAGE_COLUMNS, limit=limit)

    def make_item(self, row: dict) -> EvalItem:
        options = _literal_list(row["options"])
        is_choice = row.get("question_type", "multiple-choice" if options else "open") == "multiple-choice"
        listed = "\n".join(f"({letter}) {option}" for letter, option in mmmu_choices(options)[1].items())
        order = _image_order(row, row["question"] + "\n" + listed)
        if not order:
            raise DataError(f"MMMU item {row['id']!r} has no image in image_1..image_7")
        renumber = {k: position for position, k in enumerate(order, start=1)}

        def renumbered(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: f"<image {renumber.get(int(m.group(1)), m.group(1))}>", text)

        question, listed = renumbered(row["question"]), renumbered(listed)
        if is_choice:
            text = self.choice_prompt.format(question=question, options=listed)
        else:
            text = self.open_prompt.format(question=question)
        images = [encode_image(row[f"image_{k}"]) for k in order]
        hashes = [image.sha256 for image in images]
        answer = row["answer"]
        answers = [answer] if is_choice or not answer.startswith("[") else [str(a) for a in _literal_list(answer)]
        meta = {"question_type": "multiple-choice" if is_choice else "open", "choices": options,
                "subject": _subject(row["id"])}
        return EvalItem(row["id"] or hashed_item_id(row["question"], hashes), user_message(images, text), answers,
                        meta, hashes)

    def score(self, item: EvalItem, output: str) -> Score:
        if item.meta["question_type"] == "open":
            predictions = parse_open_response(output)
            correct = eval_open(item.answers if len(item.answers) > 1 else item.answers[0], predictions)
            extracted = " | ".join(map(str, predictions)) or None
            return Score(float(correct), extracted, parse_failed=not output.strip())
        letter, failed = self._choose(output, *mmmu_choices(item.meta["choices"]))
        if failed:
            return Score(0.0, None, parse_failed=True)
        return Score(float(eval_multi_choice(item.answers[0], letter)), letter, parse_failed=False)

    def _choose(self, output: str, letters: list[str], index2ans: dict[str, str]) -> tuple[str, bool]:
        if not self.cot:
            return parse_multi_choice_response(output, letters, index2ans)
        # CoT answers discuss every option before concluding, so the conclusion is looked for first: an explicit
        # final choice, then the official parser on the last paragraph, then on the whole text.
        final = [m.group(1) for m in _FINAL_CHOICE.finditer(output.replace("**", "")) if m.group(1) in letters]
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        lone = _LONE_LETTER.match(lines[-1]) if lines else None
        if lone and lone.group(1) in letters:
            return lone.group(1), False
        if final:
            return final[-1], False
        paragraphs = [p for p in output.split("\n\n") if p.strip()]
        if paragraphs:
            letter, failed = parse_multi_choice_response(paragraphs[-1], letters, index2ans)
            if not failed:
                return letter, False
        return parse_multi_choice_response(output, letters, index2ans)


def _literal_list(value) -> list:
    """MMMU stores lists as their Python literal ("['a', 'b']"); exports may hold real lists."""
    return list(ast.literal_eval(value) if isinstance(value, str) else value)


def _subject(item_id: str | None) -> str | None:
    try:
        return mmmu_subject(item_id or "")
    except ValueError:  # an export with its own ids: no per-subject breakdown
        return None


def _image_order(row: dict, text: str) -> list[int]:
    """Image numbers in order of their first `<image k>` mention, then any unmentioned ones in column order."""
    present = [k for k in range(1, len(IMAGE_COLUMNS) + 1) if row.get(f"image_{k}") is not None]
    mentioned = dict.fromkeys(int(k) for k in _PLACEHOLDER.findall(text) if int(k) in present)
    return [*mentioned, *(k for k in present if k not in mentioned)]
