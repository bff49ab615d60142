"""TextVQA: questions that need reading text in the image, scored by VQA accuracy; the OCR tokens are not used."""

from vlmserve.evals.tasks.vqav2 import VQA_PROMPT, VQAv2


class TextVQA(VQAv2):
    """Meta publishes no TextVQA prompt; its VQAv2 prompt asks for the same short answers, and the rows differ
    from VQAv2's only in holding bare answer strings, which `VQAv2.make_item` accepts."""

    name = "textvqa"
    description = "TextVQA validation, Meta's VQAv2 prompt (Meta published none for TextVQA); OCR tokens unused"
    metric = "VQA accuracy (10 leave-one-out subsets; the card calls it 'relaxed accuracy' without defining it)"
    split = "validation"
    card_split = "validation"
    layout = ("lmms-lab/textvqa: data/validation-*.parquet (or validation.jsonl) with columns question_id, "
              "question, answers (list of 10 str), image")
    prompt_template = VQA_PROMPT
    max_tokens = 25
    reference_scores = {"Llama 3.2 11B Vision base": 73.1, "Llama 3.2 90B Vision base": 73.5}
