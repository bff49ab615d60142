"""MathVista testmini: mathematical reasoning over figures, answers extracted by rules (no LLM extractor)."""

from vlmserve.evals.data import SplitFiles
from vlmserve.evals.metrics import extract_mathvista_answer, mathvista_correct
from vlmserve.evals.tasks.base import EvalItem, Score, Task, single_image_item

_REQUIRED = ["pid", "query", "answer", "question_type", "answer_type", "choices", "precision"]


class MathVista(Task):
    name = "mathvista"
    description = ("MathVista testmini, Meta's prompt: the image, then the dataset's ready-made `query` (hint, "
                   "question and choices)")
    metric = ("accuracy with rule-based answer extraction (Meta used an LLM extractor, so expect lower numbers "
              "where answers are verbose)")
    split = "testmini"
    card_split = "testmini"
    layout = ("AI4Math/MathVista: data/testmini-*.parquet (or testmini.jsonl) with columns pid, query, answer, "
              "question_type, answer_type, choices, precision, and decoded_image (HF Image) or image (a path "
              "relative to the data file or --data); optional unit, metadata")
    prompt_template = "{query}"  # Meta: `<|image|>{question}`; the query column is that rendered question
    max_tokens = 2048
    reference_scores = {"Llama 3.2 11B Vision Instruct": 51.5, "Llama 3.2 90B Vision Instruct": 57.3}

    def rows(self, files: SplitFiles, limit):
        image = "decoded_image" if "decoded_image" in files.columns() else "image"
        rows = files.rows([*_REQUIRED, image], ["unit", "metadata"], images=[image], limit=limit)
        return ({**row, "image": row[image]} for row in rows)

    def make_item(self, row: dict) -> EvalItem:
        meta = {key: row.get(key) for key in ("question_type", "answer_type", "choices", "precision", "unit")}
        meta |= row.get("metadata") or {}  # category, source, task, grade, ...: the paper's breakdowns
        text = self.prompt_template.format(query=row["query"])
        return single_image_item(row["pid"], row["image"], row["query"], text, [row["answer"]], meta)

    def score(self, item: EvalItem, output: str) -> Score:
        meta = item.meta
        extracted = extract_mathvista_answer(output, meta["question_type"], meta["answer_type"], meta["choices"],
                                             meta["precision"])
        if not extracted:  # None: the rules found nothing; "": the response was empty
            return Score(0.0, None, parse_failed=True)
        correct = mathvista_correct(extracted, item.answers[0], meta["answer_type"], meta["precision"],
                                    question_type=meta["question_type"], choices=meta["choices"])
        return Score(float(correct), extracted, parse_failed=False)
