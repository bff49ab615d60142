"""Every benchmark task against synthetic data in its real layout: prompts, images, ids, scores and data errors."""

import base64
import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.evals.synthetic import write_dataset, write_rows
from tests.helpers import png_bytes
from vlmserve.evals.data import DataError, encode_image
from vlmserve.evals.tasks import TASKS, get_task

NUM_ITEMS = 5


def _images_and_text(item):
    (message,) = item.messages
    assert message["role"] == "user"
    *images, text = message["content"]
    assert text["type"] == "text" and all(part["type"] == "image_url" for part in images)
    return [part["image_url"]["url"] for part in images], text["text"]


def _url_bytes(url: str) -> bytes:
    header, payload = url.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return base64.b64decode(payload)


@pytest.mark.parametrize("name", list(TASKS))
def test_task_loads_and_scores_its_synthetic_data(name, tmp_path):
    task = TASKS[name]
    gold = write_dataset(name, tmp_path, NUM_ITEMS)
    items = task.load(tmp_path)
    assert [item.item_id for item in items] == [g.item_id for g in gold]
    assert [item.item_id for item in task.load(tmp_path)] == [g.item_id for g in gold]  # stable across loads
    for item, expected in zip(items, gold):
        urls, text = _images_and_text(item)
        assert item.image_hashes == [hashlib.sha256(_url_bytes(url)).hexdigest() for url in urls]
        assert item.answers == expected.answers
        if not name.startswith("mmmu"):  # MMMU renumbers <image k>; tested below
            assert expected.question in text
        correct, wrong = task.score(item, expected.correct_output), task.score(item, expected.wrong_output)
        assert (correct.value, correct.parse_failed) == (1.0, False), (expected.correct_output, correct)
        assert wrong.value == pytest.approx(expected.wrong_value), (expected.wrong_output, wrong)


@pytest.mark.parametrize("name", ["vqav2", "textvqa", "docvqa", "infovqa", "chartqa", "chartqa_cot_90b"])
def test_single_question_prompts_are_the_template(name, tmp_path):
    task = TASKS[name]
    gold = write_dataset(name, tmp_path, 2)
    for item, expected in zip(task.load(tmp_path), gold):
        assert _images_and_text(item)[1] == task.prompt_template.format(question=expected.question)


def test_meta_prompts_keep_metas_wording(tmp_path):
    assert TASKS["vqav2"].prompt_template.startswith(" Look at the image carefully and answer this visual question.")
    assert TASKS["docvqa"].prompt_template.endswith("Never respond in a sentence or a phrase.\n Question: {question}")
    assert TASKS["chartqa_cot"].prompt_template.endswith("The question is: {question}\nLet's think step by step.")
    assert "<|image|>" not in "".join(task.prompt_template for task in TASKS.values())
    write_dataset("ai2d", tmp_path, 1)
    _, text = _images_and_text(TASKS["ai2d"].load(tmp_path)[0])
    assert text == ("Look at the scientific diagram carefully and answer the following question: What color is the "
                    "square in diagram 0?\n1) red\n2) blue\n3) green\n4) yellow\n Respond only with the correct "
                    "option digit.")


@pytest.mark.parametrize("name", ["vqav2", "textvqa", "docvqa", "infovqa", "chartqa", "ai2d", "mmmu", "mathvista"])
def test_jsonl_with_image_files_reads_like_parquet(name, tmp_path):
    write_dataset(name, tmp_path / "p", 4)
    write_dataset(name, tmp_path / "j", 4, fmt="jsonl")
    parquet, jsonl = TASKS[name].load(tmp_path / "p"), TASKS[name].load(tmp_path / "j")
    assert not list((tmp_path / "j").rglob("*.parquet"))
    assert [(i.item_id, i.image_hashes, i.messages) for i in jsonl] == [
        (i.item_id, i.image_hashes, i.messages) for i in parquet]


def test_limit_reads_the_first_items(tmp_path):
    write_dataset("mmmu", tmp_path, NUM_ITEMS)  # two subject folders: the limit spans files
    task = TASKS["mmmu"]
    everything = [item.item_id for item in task.load(tmp_path)]
    assert [item.item_id for item in task.load(tmp_path, limit=4)] == everything[:4]
    assert task.load(tmp_path, limit=0) == []


def test_mmmu_sends_images_in_placeholder_order(tmp_path):
    gold = write_dataset("mmmu_cot", tmp_path, 4)
    item = TASKS["mmmu_cot"].load(tmp_path)[3]
    assert "<image 2> with <image 1>" in gold[3].question
    urls, text = _images_and_text(item)
    rows = pq.read_table(next((tmp_path / "Math").glob("*.parquet"))).to_pylist()
    row = next(row for row in rows if row["id"] == item.item_id)
    assert [_url_bytes(url) for url in urls] == [row["image_2"]["bytes"], row["image_1"]["bytes"]]
    assert "Compare <image 1> with <image 2>. What color is the shape in <image 2>? Options: (A) red\n(B) blue" in text
    assert item.meta == {"question_type": "multiple-choice", "choices": ["red", "blue", "green", "yellow"],
                         "subject": "Math"}


def test_mmmu_unparsable_choice_is_wrong_not_guessed(tmp_path):
    write_dataset("mmmu", tmp_path, 1)
    for name in ("mmmu", "mmmu_cot"):
        item = TASKS[name].load(tmp_path)[0]
        assert TASKS[name].score(item, "I cannot tell.") == TASKS[name].score(item, "") == (
            TASKS[name].score(item, "no idea"))
        assert TASKS[name].score(item, "I cannot tell.").parse_failed


def test_mmmu_cot_prefers_the_conclusion(tmp_path):
    write_dataset("mmmu_cot", tmp_path, 1)  # gold A
    task = TASKS["mmmu_cot"]
    item = task.load(tmp_path)[0]
    reasoning = "(B) blue is wrong and (C) green is wrong.\n\n"
    assert task.score(item, reasoning + "**Answer:** A").extracted == "A"
    assert task.score(item, reasoning + "Therefore:\nA").value == 1.0
    assert task.score(item, reasoning + "So (D) is also wrong, leaving \\boxed{A}.").value == 1.0


def test_chartqa_reports_strict_and_lenient(tmp_path):
    write_dataset("chartqa", tmp_path, 1)  # item 0: the value of Pears, 25
    direct, cot = TASKS["chartqa"], TASKS["chartqa_cot"]
    item = direct.load(tmp_path)[0]
    assert item.answers == ["25"] and item.meta == {"source": "augmented"}
    score = direct.score(item, "$25")
    assert (score.value, score.extra) == (0.0, {"relaxed_strict": 0.0, "relaxed_lenient": 1.0})
    score = cot.score(item, "Pears reach twenty-five.\n**FINAL ANSWER:** $25")
    assert (score.value, score.extracted, score.parse_failed) == (1.0, "$25", False)
    assert score.extra == {"relaxed_strict": 0.0, "relaxed_lenient": 1.0}
    assert cot.score(item, "It is 25").parse_failed


def test_chartqa_reads_the_huggingfacem4_layout(tmp_path):
    image = png_bytes(size=(8, 8), color="white")
    write_rows(tmp_path, "data", "test", [{"image": image, "query": "How many?", "label": ["7"],
                                            "human_or_machine": 1}], ["image"], "parquet")
    (item,) = TASKS["chartqa"].load(tmp_path)
    assert (item.answers, item.meta) == (["7"], {"source": "augmented"})
    assert _images_and_text(item)[1].startswith("How many?\n")


def test_repeated_questions_on_one_image_get_distinct_stable_ids(tmp_path):
    image = png_bytes(size=(8, 8), color="white")
    row = {"question": "Max?", "answer": "3", "image": image}
    write_rows(tmp_path, "data", "test", [row, row], ["image"], "parquet")
    first, second = (item.item_id for item in TASKS["chartqa"].load(tmp_path))
    assert second == f"{first}-2"


def test_ai2d_reads_the_option_number(tmp_path):
    write_dataset("ai2d_cot", tmp_path, 3)
    task = TASKS["ai2d_cot"]
    item = task.load(tmp_path)[2]  # gold index 2: option 3, "green"
    assert task.score(item, "Step 1: there are 4 options.\nFINAL ANSWER: 3").value == 1.0
    assert task.score(item, 'The square is green.\n"FINAL ANSWER": 3) green').extracted == "3"
    assert task.score(item, "It is green").value == 1.0  # no number: the one option named
    failed = task.score(item, "FINAL ANSWER: 9")
    assert (failed.value, failed.extracted, failed.parse_failed) == (0.0, None, True)


def test_missing_data_raises_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TASKS["vqav2"].load(tmp_path / "absent")
    write_dataset("vqav2", tmp_path, 2)
    with pytest.raises(DataError, match=r"no 'testmini' split .*testmini-\*\.parquet.*AI4Math/MathVista"):
        TASKS["mathvista"].load(tmp_path)
    split_file = tmp_path / "data" / "validation-00000-of-00001.parquet"
    split_file.rename(tmp_path / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match="no 'validation' split"):
        TASKS["vqav2"].load(tmp_path)


def test_a_single_unnamed_file_is_the_split(tmp_path):
    write_dataset("vqav2", tmp_path / "export", 2)
    (tmp_path / "export" / "data" / "validation-00000-of-00001.parquet").rename(tmp_path / "vqav2.parquet")
    assert [item.item_id for item in TASKS["vqav2"].load(tmp_path)] == ["5000", "5001"]


def test_missing_column_raises_data_error_naming_it(tmp_path):
    write_dataset("docvqa", tmp_path, 2)
    path = next((tmp_path / "DocVQA").glob("*.parquet"))
    pq.write_table(pq.read_table(path).drop_columns(["answers"]), path)
    with pytest.raises(DataError, match=rf"{path}.*'answers'.*expected layout: lmms-lab/DocVQA"):
        TASKS["docvqa"].load(tmp_path)


def test_jsonl_row_missing_a_key_and_missing_image_file(tmp_path):
    write_dataset("ai2d", tmp_path, 2, fmt="jsonl")
    path = tmp_path / "data" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[1]["options"]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(DataError, match="line 2 lacks key.*'options'"):
        TASKS["ai2d"].load(tmp_path)
    path.write_text(json.dumps({**rows[0], "image": "images/gone.png"}))
    with pytest.raises(DataError, match="images/gone.png' not found"):
        TASKS["ai2d"].load(tmp_path)


def test_images_keep_png_and_jpeg_bytes_and_convert_the_rest():
    image = Image.new("RGB", (4, 4), "red")
    for fmt, media_type in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        encoded = encode_image(buffer.getvalue())
        assert encoded.url.startswith(f"data:{media_type};base64,")
        assert _url_bytes(encoded.url) == buffer.getvalue()
        assert encoded.sha256 == hashlib.sha256(buffer.getvalue()).hexdigest()
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")
    encoded = encode_image(buffer.getvalue())
    assert Image.open(io.BytesIO(_url_bytes(encoded.url))).format == "PNG"
    with pytest.raises(DataError, match="not a recognised image"):
        encode_image(b"not an image")


def test_get_task_lists_the_known_names():
    assert get_task("mmmu_cot") is TASKS["mmmu_cot"]
    with pytest.raises(ValueError, match="unknown eval task 'mmlu'.*vqav2.*chartqa_cot.*mathvista"):
        get_task("mmlu")
