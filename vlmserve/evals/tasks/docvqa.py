"""DocVQA: questions about scanned documents, answered with text from the page, scored by ANLS."""

from vlmserve.evals.data import SplitFiles
from vlmserve.evals.metrics import anls
from vlmserve.evals.tasks.base import EvalItem, Score, Task, single_image_item

# Meta's DocVQA prompt (llama-models eval_details.md) without its leading `<|image|>`; the leading space is Meta's.
DOCUMENT_PROMPT = (
    " Read the text in the image carefully and answer the question with the text as seen exactly in the image. "
    "For yes/no questions, just respond Yes or No. If the answer is numeric, just respond with the number and "
    "nothing else. If the answer has multiple words, just respond with the words and absolutely nothing else. "
    "Never respond in a sentence or a phrase.\n Question: {question}"
)


class DocVQA(Task):
    name = "docvqa"
    description = "DocVQA validation, Meta's DocVQA prompt (the card's Instruct figure is on the hidden test split)"
    metric = "ANLS (threshold 0.5, RRC normalisation)"
    split = "validation"
    card_split = "test"
    config = "DocVQA"
    layout = ("lmms-lab/DocVQA config DocVQA: DocVQA/validation-*.parquet (or validation.jsonl in --data) with "
              "columns questionId, question, answers (list of str), image; optional question_types")
    prompt_template = DOCUMENT_PROMPT
    max_tokens = 512
    reference_scores = {"Llama 3.2 11B Vision Instruct": 88.4, "Llama 3.2 90B Vision Instruct": 90.1,
                        "Llama 3.2 11B Vision base (val)": 62.3, "Llama 3.2 90B Vision base (val)": 70.7}
    meta_columns = ("question_types",)

    def rows(self, files: SplitFiles, limit):
        return files.rows(["questionId", "question", "answers", "image"], self.meta_columns, images=["image"],
                          limit=limit)

    def make_item(self, row: dict) -> EvalItem:
        meta = {key: row[key] for key in self.meta_columns if key in row}
        return single_image_item(row["questionId"], row["image"], row["question"],
                                 self.prompt_template.format(question=row["question"]), list(row["answers"]), meta)

    def score(self, item: EvalItem, output: str) -> Score:
        answer = output.strip()
        return Score(anls(output, item.answers), answer or None, parse_failed=not answer)
