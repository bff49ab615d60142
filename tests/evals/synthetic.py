"""Tiny synthetic benchmark data in the real Hugging Face layouts, with known answers, for the eval tests.

`write_dataset(task_name, directory, num_items)` writes what `vlmserve eval --data` expects for that task and
returns, per item in load order, its id, gold answers, an output that scores 1.0 and a wrong output with the
exact score it earns. Images are drawn (charts with matplotlib, documents with PIL) so that they hold the answer.
"""

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from tests.helpers import png_bytes
from vlmserve.evals.tasks.base import hashed_item_id

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 60), "yellow": (230, 210, 30)}


@dataclass(frozen=True)
class SyntheticItem:
    item_id: str
    question: str
    answers: list[str]
    correct_output: str  # a model output that scores 1.0
    wrong_output: str
    wrong_value: float  # what `wrong_output` scores


def write_dataset(task_name: str, directory: Path, num_items: int, fmt: str = "parquet") -> list[SyntheticItem]:
    """Write `num_items` items for `task_name` under `directory` as parquet (images embedded as HF Image
    structs) or as JSONL (images as files beside, referenced by relative path)."""
    writer = WRITERS[task_name.removesuffix("_90b").removesuffix("_cot")]
    return writer(Path(directory), num_items, fmt, cot=task_name.endswith(("_cot", "_cot_90b")))


def write_rows(directory: Path, folder: str, split: str, rows: list[dict], image_columns: list[str],
               fmt: str) -> Path:
    """One split file, `<folder>/<split>-00000-of-00001.parquet` or `<folder>/<split>.jsonl`; images are bytes."""
    target = directory / folder
    target.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        rows = [{**row, **{c: {"bytes": row[c], "path": f"{c}.png"} for c in image_columns if row[c]}}
                for row in rows]
        path = target / f"{split}-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    (target / "images").mkdir(exist_ok=True)
    path = target / f"{split}.jsonl"
    with path.open("w") as file:
        for row in rows:
            row = dict(row)
            for column in image_columns:
                if row[column]:
                    name = f"images/{hashlib.sha256(row[column]).hexdigest()[:12]}.png"
                    (target / name).write_bytes(row[column])
                    row[column] = name
            file.write(json.dumps(row) + "\n")
    return path


def _square(color: str, size: int = 48) -> bytes:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle([8, 8, size - 8, size - 8], fill=COLORS[color])
    return png_bytes(image)


def _text_image(lines: list[str], size=(240, 120)) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((10, 10 + 18 * number), line, fill="black")
    return png_bytes(image)


def _vqav2(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    rows, gold = [], []
    for i in range(num_items):
        color = list(COLORS)[i % len(COLORS)]
        question = "What color is the square?"
        answers = [color] * 6 + [f"dark {color}"] * 3 + ["purple"]  # "purple" matches one annotator: 0.3
        rows.append({"question_type": "what color is the", "multiple_choice_answer": color,
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                 for k, a in enumerate(answers)],
                     "image_id": 1000 + i, "answer_type": "other", "question_id": 5000 + i, "question": question,
                     "image": _square(color)})
        gold.append(SyntheticItem(str(5000 + i), question, answers, color.capitalize(), "purple", 0.3))
    write_rows(directory, "data", "validation", rows, ["image"], fmt)
    return gold


def _textvqa(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    words = ["stop", "exit", "open", "sale"]
    rows, gold = [], []
    for i in range(num_items):
        word, other = words[i % len(words)], words[(i + 1) % len(words)]
        question = "what does the sign say?"
        answers = [word] * 8 + [other] * 2  # `other` matches two annotators: 0.6
        rows.append({"image_id": f"img{i}", "question_id": 34602 + i, "question": question,
                     "question_tokens": question.split(), "image": _text_image([word.upper()]),
                     "answers": answers, "ocr_tokens": [word.upper()], "set_name": "val"})
        gold.append(SyntheticItem(str(34602 + i), question, answers, word.upper(), other, 0.6))
    write_rows(directory, "data", "validation", rows, ["image"], fmt)
    return gold


def _docvqa(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    rows, gold = [], []
    for i in range(num_items):
        date = f"12/{10 + i % 18}/88"
        question = "What is the date on the letter?"
        page = _text_image(["Dear Dr. Lobo,", f"Date: {date}", "Total: $1,250.00"])
        rows.append({"questionId": str(49000 + i), "question": question, "question_types": ["handwritten"],
                     "image": page, "docId": 700 + i, "answers": [date], "data_split": "val"})
        # one wrong character of eight: ANLS 1 - 1/8
        gold.append(SyntheticItem(str(49000 + i), question, [date], date, date[:-1] + "9", 0.875))
    write_rows(directory, "DocVQA", "validation", rows, ["image"], fmt)
    return gold


def _infovqa(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    rows, gold = [], []
    for i in range(num_items):
        count = f"4,5{10 + i % 90}"
        question = "How many people live in the town?"
        rows.append({"questionId": str(65000 + i), "question": question, "answers": [count],
                     "answer_type": ["single span"], "image": _text_image(["TOWN FACTS", f"Population: {count}"]),
                     "ocr": "", "data_split": "val"})
        gold.append(SyntheticItem(str(65000 + i), question, [count], count, count[:-1] + "x", 0.8))
    write_rows(directory, "InfographicVQA", "validation", rows, ["image"], fmt)
    return gold


def _bar_chart(values: dict[str, int]) -> bytes:
    figure = Figure(figsize=(3.2, 2.4), dpi=50)
    axes = figure.subplots()
    bars = axes.bar(list(values), list(values.values()))
    axes.bar_label(bars)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _chartqa(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    rows, gold = [], []
    for i in range(num_items):
        values = {"Apples": 40 + i, "Pears": 25 + 2 * i, "Plums": 12 + 3 * i}
        image = _bar_chart(values)
        if i % 2:
            question, answer, wrong = "Which fruit has the highest value?", "Apples", "Plums"
        else:
            question, answer, wrong = "What is the value of Pears?", str(values["Pears"]), str(2 * values["Pears"])
        rows.append({"type": "human_test" if i % 2 else "augmented_test", "question": question, "answer": answer,
                     "image": image})
        correct, wrong = ((f"The bar is labelled.\nFINAL ANSWER: {answer}", f"FINAL ANSWER: {wrong}") if cot
                          else (answer, wrong))
        gold.append(SyntheticItem(hashed_item_id(question, [hashlib.sha256(image).hexdigest()]), question,
                                  [answer], correct, wrong, 0.0))
    write_rows(directory, "data", "test", rows, ["image"], fmt)
    return gold


def _ai2d(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    rows, gold = [], []
    for i in range(num_items):
        options = ["red", "blue", "green", "yellow"]
        answer = i % 4
        question = f"What color is the square in diagram {i}?"
        image = _square(options[answer])
        rows.append({"question": question, "options": options, "answer": str(answer), "image": image})
        number, wrong = answer + 1, (answer + 1) % 4 + 1
        correct = f"The square is {options[answer]}.\nFINAL ANSWER: {number}" if cot else str(number)
        item_id = hashed_item_id("\n".join([question, *options]), [hashlib.sha256(image).hexdigest()])
        gold.append(SyntheticItem(item_id, question, [str(answer)], correct, str(wrong), 0.0))
    write_rows(directory, "data", "test", rows, ["image"], fmt)
    return gold


def _mmmu(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    """Per subject folder, as MMMU/MMMU: every third item is open, every fourth has two images with
    <image 2> mentioned before <image 1>."""
    subjects = {"Art_Theory": [], "Math": []}
    gold = []
    for i in range(num_items):
        subject = "Art_Theory" if i < (num_items + 1) // 2 else "Math"
        item_id = f"validation_{subject}_{i + 1}"
        row = {"id": item_id, "explanation": "", "img_type": "['Diagrams']", "topic_difficulty": "Easy",
               "subfield": subject, **{f"image_{k}": None for k in range(1, 8)}}
        colors = list(COLORS)
        if i % 3 == 2:
            row |= {"question": f"<image 1> How many sides does the shape have? Add {i}.", "options": "[]",
                    "answer": str(4 + i), "question_type": "open", "image_1": _square("green")}
            correct = f"The square has 4 sides, so the answer is {4 + i}" if cot else str(4 + i)
            gold.append(SyntheticItem(item_id, row["question"], [str(4 + i)], correct, str(100 + i), 0.0))
        else:
            answer = "ABCD"[i % 4]
            two = i % 4 == 3
            question = ("Compare <image 2> with <image 1>. What color is the shape in <image 1>?" if two
                        else "<image 1> What color is the shape?")
            row |= {"question": question, "options": str(colors), "answer": answer,
                    "question_type": "multiple-choice", "image_1": _square(colors[i % 4])}
            if two:
                row["image_2"] = _square(colors[(i + 1) % 4])
            correct = f"Looking at the shape, it is {colors[i % 4]}.\nThe answer is ({answer})." if cot \
                else answer
            gold.append(SyntheticItem(item_id, question, [answer], correct, "ABCD"[(i + 1) % 4], 0.0))
        subjects[subject].append(row)
    for subject, rows in subjects.items():
        if rows:
            write_rows(directory, subject, "validation", rows, [f"image_{k}" for k in range(1, 8)], fmt)
    return gold


# (question_type, answer_type, choices, precision, answer, correct output, wrong output)
_MATHVISTA_KINDS = [
    ("multi_choice", "text", ["triangle", "square", "circle"], None, "square", "square", "(C) circle"),
    ("free_form", "integer", None, None, "4", "The shape has 4 corners.\nAnswer: 4", "5"),
    ("free_form", "float", None, 1.0, "2.5", "2.5", "The ratio is 3.5"),
    ("free_form", "list", None, None, "[1, 2]", "[1, 2]", "[2, 1]"),
]


def _mathvista(directory: Path, num_items: int, fmt: str, cot: bool) -> list[SyntheticItem]:
    rows, gold = [], []
    for i in range(num_items):
        question_type, answer_type, choices, precision, answer, correct, wrong = _MATHVISTA_KINDS[i % 4]
        question = f"Question {i} about the square in the figure."
        hint = "Please answer the question and provide the final answer at the end."
        query = f"Hint: {hint}\nQuestion: {question}" + (
            "\nChoices:\n" + "\n".join(f"({'ABC'[k]}) {c}" for k, c in enumerate(choices)) if choices else "")
        image = _square("blue")
        row = {"pid": str(i + 1), "question": question, "image": f"images/{i + 1}.jpg", "choices": choices,
               "unit": None, "precision": precision, "answer": answer, "question_type": question_type,
               "answer_type": answer_type, "query": query,
               "metadata": {"category": "math-targeted-vqa", "context": "synthetic scene", "grade": "daily life",
                            "img_height": 48, "img_width": 48, "language": "english", "skills": ["arithmetic"],
                            "source": "synthetic", "split": "testmini", "task": "figure question answering"}}
        row |= {"decoded_image": image} if fmt == "parquet" else {"image": image}
        rows.append(row)
        gold.append(SyntheticItem(str(i + 1), question, [answer], correct, wrong, 0.0))
    write_rows(directory, "data", "testmini", rows, ["decoded_image"] if fmt == "parquet" else ["image"], fmt)
    return gold


WRITERS = {"vqav2": _vqav2, "textvqa": _textvqa, "docvqa": _docvqa, "infovqa": _infovqa, "chartqa": _chartqa,
           "ai2d": _ai2d, "mmmu": _mmmu, "mathvista": _mathvista}
