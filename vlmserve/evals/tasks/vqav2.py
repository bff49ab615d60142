"""VQAv2: open-ended questions about COCO images, scored by VQA accuracy against 10 human answers."""

from vlmserve.evals.data import SplitFiles
from vlmserve.evals.metrics import vqa_accuracy
from vlmserve.evals.tasks.base import EvalItem, Score, Task, single_image_item

# Meta's Llama 3.2 Vision VQAv2 prompt (llama-models eval_details.md) without its leading `<|image|>`, which the
# image part replaces; the leading space is Meta's.
VQA_PROMPT = (
    " Look at the image carefully and answer this visual question. For yes/no questions, just respond Yes or No. "
    "If the answer is numeric, just respond with the number and nothing else. If the answer has multiple words, "
    "just respond with the words and absolutely nothing else. Never respond in a sentence or a phrase.\n"
    " Respond with as few words as possible.\n Question: {question}"
)


class VQAv2(Task):
    name = "vqav2"
    description = "VQAv2 validation, Meta's VQAv2 prompt (the model card's Instruct figure is on test)"
    metric = "VQA accuracy (official normalisation, 10 leave-one-out subsets)"
    split = "validation"
    card_split = "test"
    layout = ("lmms-lab/VQAv2: data/validation-*.parquet (or validation.jsonl) with columns question_id, question, "
              "answers (10 x {answer, ...}), image; optional answer_type, question_type")
    prompt_template = VQA_PROMPT
    max_tokens = 25
    reference_scores = {"Llama 3.2 11B Vision Instruct": 75.2, "Llama 3.2 90B Vision Instruct": 78.1,
                        "Llama 3.2 11B Vision base (val)": 66.8, "Llama 3.2 90B Vision base (val)": 73.6}

    def rows(self, files: SplitFiles, limit):
        return files.rows(["question_id", "question", "answers", "image"], ["answer_type", "question_type"],
                          images=["image"], limit=limit)

    def make_item(self, row: dict) -> EvalItem:
        # HF stores {answer, answer_confidence, answer_id} structs; JSONL exports often keep bare strings.
        answers = [a["answer"] if isinstance(a, dict) else a for a in row["answers"]]
        meta = {key: row[key] for key in ("answer_type", "question_type") if key in row}
        return single_image_item(row["question_id"], row["image"], row["question"],
                                 self.prompt_template.format(question=row["question"]), answers, meta)

    def score(self, item: EvalItem, output: str) -> Score:
        answer = output.strip()
        return Score(vqa_accuracy(output, item.answers), answer or None, parse_failed=not answer)
