"""MathVista testmini: mathematical reasoning over figures. Answers are extracted by rules, or, when the run is
given an extractor endpoint, by an LLM with the official extraction prompt after the official quick rules."""

from vlmserve.evals.data import SplitFiles
from vlmserve.evals.metrics import extract_mathvista_answer, mathvista_correct, quick_mathvista_answer
from vlmserve.evals.tasks.base import EvalItem, Score, Task, single_image_item
from vlmserve.evals.tasks.mathvista_extractor import extraction_prompt

_REQUIRED = ["pid", "query", "answer", "question_type", "answer_type", "choices", "precision"]


class MathVista(Task):
    name = "mathvista"
    description = ("MathVista testmini, Meta's prompt: the image, then the dataset's ready-made `query` (hint, "
                   "question and choices)")
    metric = ("accuracy; answers extracted by rules unless an LLM extractor is given (Meta used one, so expect "
              "lower numbers from rules where answers are verbose)")
    split = "testmini"
    card_split = "testmini"
    layout = ("AI4Math/MathVista: data/testmini-*.parquet (or testmini.jsonl) with columns pid, query, answer, "
              "question_type, answer_type, choices, precision, and decoded_image (HF Image) or image (a path "
              "relative to the data file or --data); optional unit, metadata")
    prompt_template = "{query}"  # Meta: `<|image|>{question}`; the query column is that rendered question
    max_tokens = 2048
    uses_extractor = True
    reference_scores = {"Llama 3.2 11B Vision Instruct": 51.5, "Llama 3.2 90B Vision Instruct": 57.3}

    def rows(self, files: SplitFiles, limit):
        image = "decoded_image" if "decoded_image" in files.columns() else "image"
        rows = files.rows([*_REQUIRED, image], ["unit", "metadata"], images=[image], limit=limit)
        return ({**row, "image": row[image]} for row in rows)

    def make_item(self, row: dict) -> EvalItem:
        meta = {key: row.get(key) for key in ("query", "question_type", "answer_type", "choices", "precision", "unit")}
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

    def extractor_prompt(self, item: EvalItem, output: str) -> str | None:
        meta = item.meta
        if quick_mathvista_answer(output, meta["question_type"], meta["answer_type"], meta["choices"]) is not None:
            return None
        return extraction_prompt(meta["query"], output)

    def score_extracted(self, item: EvalItem, extraction: str) -> Score:
        meta = item.meta
        correct = mathvista_correct(extraction, item.answers[0], meta["answer_type"], meta["precision"],
                                    question_type=meta["question_type"], choices=meta["choices"])
        return Score(float(correct), extraction, parse_failed=not extraction)
