"""The prompt of MathVista's LLM answer extractor, after lupantech/MathVista `evaluation/prompts/ext_ans.py`
and `create_test_prompt` in `evaluation/extract_answer.py` (research/evals.md §4.4).

The extractor reads the question and the model's free-form response and replies with the bare answer, which is
then normalised and compared like any other extraction. The five demos are the official ones, word for word
(the double space in "line  graph" included), so an extractor scores as it does in the official pipeline.
"""

# The official get_chat_response's budget for the extractor's reply.
EXTRACTOR_MAX_TOKENS = 256

DEMO_PROMPT = """
Please read the following example. Then extract the answer from the model response and type it at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B
"""


def extraction_prompt(query: str, response: str) -> str:
    """The official test prompt: the demos, the item's `query` (hint, question, choices), the model's response
    as it is (no "Model response:" label, as in the official code), and the cue the extractor completes."""
    return f"{DEMO_PROMPT.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "
