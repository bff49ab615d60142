"""AI2D: multiple-choice questions about science diagrams, options numbered 1..n as Meta's prompts ask."""

import re

from vlmserve.evals.data import SplitFiles
from vlmserve.evals.metrics.answer_text import answer_after, last_line
from vlmserve.evals.tasks.base import EvalItem, Score, Task, single_image_item

# Meta's AI2D prompts (llama-models eval_details.md) without the leading `<|image|>`. Meta does not show how the
# options enter {question}; we append them numbered from 1, since both prompts ask for an option number.
PROMPT_11B = (
    "Look at the scientific diagram carefully and answer the following question: {question}\n Think step by step "
    'and finally respond to the question with only the correct option number as "FINAL ANSWER". '
    "Let's think step by step."
)
PROMPT_90B = ("Look at the scientific diagram carefully and answer the following question: {question}\n "
              "Respond only with the correct option digit.")
_FINAL_ANSWER = re.compile(r"final answer", re.IGNORECASE)
_INTEGER = re.compile(r"\d+")


class AI2D(Task):
    split = "test"
    card_split = "test"
    layout = ("lmms-lab/ai2d: data/test-*.parquet (or test.jsonl) with columns question, options (list of str), "
              "answer (0-based option index as str), image")
    metric = "accuracy (option number after the last 'FINAL ANSWER', else on the last line; unparsed = wrong)"

    def __init__(self, cot: bool):
        self.cot = cot
        self.name = "ai2d_cot" if cot else "ai2d"
        which = "11B's step-by-step prompt" if cot else "90B's direct prompt"
        self.description = f"AI2D test, Meta's {which}, options listed as '1) ...'"
        self.prompt_template = (PROMPT_11B if cot else PROMPT_90B).replace("{question}", "{question}\n{options}")
        self.max_tokens = 400
        self.reference_scores = {"Llama 3.2 11B Vision Instruct": 91.1, "Llama 3.2 90B Vision Instruct": 92.3}
        if not cot:
            self.reference_scores |= {"Llama 3.2 11B Vision base": 62.4, "Llama 3.2 90B Vision base": 75.3}

    def rows(self, files: SplitFiles, limit):
        return files.rows(["question", "options", "answer", "image"], images=["image"], limit=limit)

    def make_item(self, row: dict) -> EvalItem:
        options = list(row["options"])
        listed = "\n".join(f"{number}) {option}" for number, option in enumerate(options, start=1))
        text = self.prompt_template.format(question=row["question"], options=listed)
        # No id column: the id hashes the question with its options (one diagram carries several questions).
        return single_image_item(None, row["image"], "\n".join([row["question"], *options]), text,
                                 [str(row["answer"])], {"choices": options})

    def score(self, item: EvalItem, output: str) -> Score:
        choice = parse_option_number(output, item.meta["choices"])
        if choice is None:
            return Score(0.0, None, parse_failed=True)
        return Score(float(choice == int(item.answers[0])), str(choice + 1), parse_failed=False)


def parse_option_number(output: str, options: list[str]) -> int | None:
    """The 0-based option the output picks: the first number 1..n in the line after the last "FINAL ANSWER"
    (else the last line), or failing that the one option whose text that line contains."""
    tail = answer_after(output, _FINAL_ANSWER)
    tail = last_line(output) if tail is None else tail
    numbers = [int(match) for match in _INTEGER.findall(tail) if 1 <= int(match) <= len(options)]
    if numbers:
        return numbers[0] - 1
    named = [index for index, option in enumerate(options) if option.strip() and option.lower() in tail.lower()]
    return named[0] if len(named) == 1 else None
