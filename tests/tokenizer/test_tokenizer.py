"""Loading the real Llama 3.2 Vision tokenizer, its special ids, and encode/decode."""

import json
import shutil

import pytest

from tests.tokenizer.helpers import UNICODE_TEXTS, assert_special_token
from vlmserve.tokenizer.tokenizer import Tokenizer, load_tokenizer, packaged_tokenizer_path

SPECIAL_TOKEN_IDS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|finetune_right_pad_id|>": 128004,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
    "<|image|>": 128256,
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer()


def write_model_dir(tmp_path, edit=None):
    """A model dir holding a copy of the packaged tokenizer.json, optionally edited as JSON first."""
    target = tmp_path / "tokenizer.json"
    if edit is None:
        shutil.copyfile(packaged_tokenizer_path(), target)
    else:
        data = json.loads(packaged_tokenizer_path().read_text(encoding="utf-8"))
        edit(data)
        target.write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("token, token_id", SPECIAL_TOKEN_IDS.items())
def test_special_token_ids(tokenizer, token, token_id):
    assert_special_token(tokenizer, token, token_id)


def test_attributes(tokenizer):
    assert tokenizer.bos_token_id == 128000
    assert tokenizer.eos_token_id == 128009
    assert tokenizer.stop_token_ids == (128001, 128008, 128009)
    assert tokenizer.image_token_id == 128256
    assert tokenizer.pad_token_id == 128004
    assert tokenizer.vocab_size == 128257


def test_unknown_tokens_and_ordinary_ids(tokenizer):
    assert tokenizer.token_to_id("<|no_such_token|>") is None
    assert tokenizer.id_to_token(10**7) is None
    assert not tokenizer.is_special(9906)


def test_known_text_ids(tokenizer):
    assert tokenizer.encode("Hello") == [9906]
    assert tokenizer.encode("\n\n") == [271]
    assert [tokenizer.encode(role) for role in ("system", "user", "assistant")] == [[9125], [882], [78191]]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_strings_in_text_become_special_ids(tokenizer):
    assert tokenizer.encode("<|image|>Describe this image.") == [128256, 75885, 420, 2217, 13]
    assert tokenizer.encode("<|begin_of_text|>Hello<|eot_id|>") == [128000, 9906, 128009]


def test_bos_only_on_request(tokenizer):
    assert tokenizer.encode("Hello") == [9906]
    assert tokenizer.encode("Hello", add_bos=True) == [128000, 9906]


def test_decode_skip_special_tokens(tokenizer):
    ids = [128000, 128256, 9906, 128009]
    assert tokenizer.decode(ids) == "<|begin_of_text|><|image|>Hello<|eot_id|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello"


def test_packaged_path_is_a_tokenizer_json():
    path = packaged_tokenizer_path()
    assert path.name == "tokenizer.json" and path.is_file()


def test_load_from_model_dir(tmp_path, tokenizer):
    loaded = load_tokenizer(write_model_dir(tmp_path))
    text = "<|image|>Was ist das? 🤔"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.stop_token_ids == tokenizer.stop_token_ids


def test_model_dir_file_is_the_one_used(tmp_path):
    def rename_image_token(data):
        for token in data["added_tokens"]:
            if token["content"] == "<|image|>":
                token["content"] = "<|picture|>"

    with pytest.raises(ValueError, match=r"'<\|image\|>'") as error:
        load_tokenizer(write_model_dir(tmp_path, rename_image_token))
    assert str(tmp_path / "tokenizer.json") in str(error.value)


def test_model_dir_without_tokenizer_falls_back_to_packaged(tmp_path):
    assert load_tokenizer(tmp_path).image_token_id == 128256


@pytest.mark.parametrize("content", ['{"version": "1.0", "model"', "", "not json at all"])
def test_corrupt_tokenizer_json(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read tokenizer file") as error:
        load_tokenizer(tmp_path)
    assert str(path) in str(error.value)
