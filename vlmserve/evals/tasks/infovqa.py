"""InfographicVQA: questions about infographics, answered with text or numbers from the image, scored by ANLS."""

from vlmserve.evals.tasks.docvqa import DOCUMENT_PROMPT, DocVQA


class InfographicVQA(DocVQA):
    """Same layout (another config of lmms-lab/DocVQA) and metric as DocVQA. Meta published no prompt; its DocVQA
    prompt is reused, as IBM unitxt's Llama-vision template does."""

    name = "infovqa"
    description = "InfographicVQA validation, Meta's DocVQA prompt (Meta published none for InfographicVQA)"
    split = "validation"
    card_split = "validation"
    config = "InfographicVQA"
    layout = ("lmms-lab/DocVQA config InfographicVQA: InfographicVQA/validation-*.parquet (or validation.jsonl in "
              "--data) with columns questionId, question, answers (list of str), image; optional answer_type")
    prompt_template = DOCUMENT_PROMPT
    max_tokens = 512
    reference_scores = {"Llama 3.2 11B Vision base": 43.2, "Llama 3.2 90B Vision base": 56.8}
    meta_columns = ("answer_type",)
