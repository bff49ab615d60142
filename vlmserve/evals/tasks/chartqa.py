"""ChartQA: questions about charts, scored by relaxed accuracy (numbers within 5 %, other answers exact)."""

from vlmserve.evals.data import DataError, SplitFiles
from vlmserve.evals.metrics import chartqa_final_answer, relaxed_accuracy
from vlmserve.evals.tasks.base import EvalItem, Score, Task, single_image_item

# lmms-eval's default ChartQA prompt: Meta published none for the base model's (non-CoT) figure.
DIRECT_PROMPT = "{question}\nAnswer the question with a single word."
# Meta's ChartQA CoT prompts (llama-models eval_details.md) without the leading `<|image|>`. Their `<cot_start>`
# marks a prefilled assistant turn; endpoints other than ours cannot continue one, so "Let's think step by step."
# ends the user text on a new line instead.
COT_PROMPT_11B = (
    "You are provided a chart image and will be asked a question. You have to think through your answer and "
    "provide a step-by-step solution. Once you have the solution, write the final answer in at most a few words at "
    'the end with the phrase "FINAL ANSWER:". The question is: {question}\nLet\'s think step by step.'
)
COT_PROMPT_90B = (
    "You are provided a chart image and will be asked a question. Follow these steps carefully:\n Step 1: Analyze "
    "the question to understand what specific data or information is being asked for. Focus on whether the "
    "question is asking for a specific number or category from the chart image.\n Step 2: Identify any numbers, "
    "categories, or groups mentioned in the question and take note of them. Focus on detecting and matching them "
    "directly to the image. \nStep 3: Study the image carefully and find the relevant data corresponding to the "
    "categories or numbers mentioned. Avoid unnecessary assumptions or calculations; simply read the correct data "
    "from the image.\n Step 4: Develop a clear plan to solve the question by locating the right data. Focus only "
    "on the specific category or group that matches the question. \nStep 5: Use step-by-step reasoning to ensure "
    "you are referencing the correct numbers or data points from the image, avoiding unnecessary extra steps or "
    'interpretations.\n Step 6: Provide the final answer, starting with "FINAL ANSWER:" and using as few words as '
    "possible, simply stating the number or data point requested. \n\n The question is: {question}\n"
    "Let's think step by step."
)
_VARIANTS = {  # name: (prompt, max_tokens, description)
    "chartqa": (DIRECT_PROMPT, 16, "lmms-eval's one-word prompt"),
    "chartqa_cot": (COT_PROMPT_11B, 512, "Meta's 11B CoT prompt"),
    "chartqa_cot_90b": (COT_PROMPT_90B, 512, "Meta's 90B CoT prompt"),
}


class ChartQA(Task):
    """Reports both relaxed accuracies in `Score.extra`. `relaxed_strict` is pix2struct's rule (lmms-eval and
    VLMEvalKit numbers) on the whole output for the direct variant and on the FINAL ANSWER line for CoT, where the
    whole output is reasoning; `relaxed_lenient` forgives "1,234", "$5" and "12%" on the FINAL ANSWER line (else
    the last line). The headline `value` is strict for the direct variant, lenient for CoT (Meta's parser is
    unpublished; its CoT answers need the leniency)."""

    split = "test"
    card_split = "test"
    layout = ("lmms-lab/ChartQA (data/test-*.parquet with columns question, answer, image; optional type) or "
              "HuggingFaceM4/ChartQA (data/test-*.parquet with columns query, label, image; optional "
              "human_or_machine), or test.jsonl with either set of columns")

    def __init__(self, name: str):
        self.name = name
        self.cot = name != "chartqa"
        self.prompt_template, self.max_tokens, prompt = _VARIANTS[name]
        self.description = f"ChartQA test (human and augmented questions), {prompt}"
        self.metric = "relaxed accuracy, " + ("lenient, on the FINAL ANSWER line" if self.cot
                                              else "strict (pix2struct) on the raw output")
        self.reference_scores = (
            {"Llama 3.2 11B Vision Instruct": 83.4, "Llama 3.2 90B Vision Instruct": 85.5} if self.cot
            else {"Llama 3.2 11B Vision base": 39.4, "Llama 3.2 90B Vision base": 54.2})

    def rows(self, files: SplitFiles, limit):
        columns = files.columns()
        if {"query", "label"} <= columns:  # HuggingFaceM4/ChartQA
            rows = files.rows(["query", "label", "image"], ["human_or_machine"], images=["image"], limit=limit)
            return ({"question": row["query"], "answer": _single_label(row["label"]), "image": row["image"],
                     "source": {0: "human", 1: "augmented"}.get(row.get("human_or_machine"))} for row in rows)
        rows = files.rows(["question", "answer", "image"], ["type"], images=["image"], limit=limit)
        return ({**row, "source": (row.get("type") or "").removesuffix("_test") or None} for row in rows)

    def make_item(self, row: dict) -> EvalItem:
        return single_image_item(None, row["image"], row["question"],
                                 self.prompt_template.format(question=row["question"]), [row["answer"]],
                                 {"source": row["source"]})

    def score(self, item: EvalItem, output: str) -> Score:
        final = chartqa_final_answer(output)
        target = item.answers[0]
        strict = relaxed_accuracy(final if self.cot else output.strip(), target)
        lenient = relaxed_accuracy(final, target, lenient=True)
        parse_failed = "final answer" not in output.lower() if self.cot else not output.strip()
        return Score(lenient if self.cot else strict, final or None, parse_failed,
                     {"relaxed_strict": strict, "relaxed_lenient": lenient})


def _single_label(label) -> str:
    labels = [label] if isinstance(label, str) else list(label)
    if len(labels) != 1:
        raise DataError(f"ChartQA label {label!r} should hold exactly one answer")
    return labels[0]
