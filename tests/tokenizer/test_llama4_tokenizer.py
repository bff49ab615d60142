"""The Llama 4 stand-in tokenizer, per-family special tokens, and loading a Llama 4 tokenizer.json."""

import json
import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from transformers import AutoTokenizer

from tests.tokenizer.helpers import UNICODE_TEXTS, assert_special_token
from vlmserve.tokenizer.llama4_standin import (
    VOCAB_SIZE,
    build_llama4_standin_tokenizer,
    llama4_special_tokens,
    write_llama4_standin_tokenizer,
)
from vlmserve.tokenizer.tokenizer import (
    LLAMA3_SPECIAL_TOKENS,
    LLAMA4_SPECIAL_TOKENS,
    Tokenizer,
    load_tokenizer,
    packaged_tokenizer_path,
)

SPECIAL_TOKEN_IDS = {  # model_spec G.5
    "<|begin_of_text|>": 200000,
    "<|end_of_text|>": 200001,
    "<|header_start|>": 200005,
    "<|header_end|>": 200006,
    "<|eom|>": 200007,
    "<|eot|>": 200008,
    "<|step|>": 200009,
    "<|python_start|>": 200016,
    "<|python_end|>": 200017,
    "<|finetune_right_pad|>": 200018,
    "<|image_start|>": 200080,
    "<|image_end|>": 200081,
    "<|tile_x_separator|>": 200084,
    "<|tile_y_separator|>": 200085,
    "<|image|>": 200090,
    "<|patch|>": 200092,
}
TEXTS = UNICODE_TEXTS + [
    "user assistant system\n\nDescribe this image.",
    "\x00\x01 control \x7f and \u200b zero width",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama4_tokenizer")
    write_llama4_standin_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(model_dir) -> Tokenizer:
    return load_tokenizer(model_dir, LLAMA4_SPECIAL_TOKENS)


def random_text(rng: random.Random, length: int) -> str:
    """Random code points from every plane, surrogates excluded."""
    points = (rng.choice([rng.randrange(0x20, 0x80), rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000)])
              for _ in range(length))
    return "".join(map(chr, points))


@pytest.mark.parametrize("token, token_id", SPECIAL_TOKEN_IDS.items())
def test_special_token_ids(tokenizer, token, token_id):
    assert_special_token(tokenizer, token, token_id)


def test_attributes(tokenizer):
    assert tokenizer.family == "llama4"
    assert tokenizer.bos_token_id == 200000
    assert tokenizer.eos_token_id == 200008
    assert tokenizer.stop_token_ids == (200001, 200007, 200008)
    assert tokenizer.image_token_id == 200090
    assert tokenizer.pad_token_id == 200018
    assert tokenizer.vocab_size == VOCAB_SIZE == 202048


def test_every_id_from_200000_is_special_and_ordinary_ids_are_not():
    built = build_llama4_standin_tokenizer()
    specials = built.get_added_tokens_decoder()
    assert sorted(specials) == list(range(200000, 202048))
    assert all(token.special for token in specials.values())
    assert [specials[token_id].content for token_id in range(200000, 202048)] == llama4_special_tokens()
    assert built.get_vocab_size(with_added_tokens=False) == 200000
    assert built.id_to_token(199999) is not None and built.id_to_token(202048) is None


def test_special_token_list_follows_meta_layout():
    tokens = llama4_special_tokens()
    assert len(tokens) == len(set(tokens)) == 2048
    assert tokens[200019 - 200000] == "<|text_post_train_reserved_special_token_6|>"
    assert tokens[201133 - 200000] == "<|vision_reserved_special_token_1047|>"
    assert tokens[201143 - 200000] == "<|reasoning_thinking_end|>"
    assert tokens[-1] == "<|reserved_special_token_903|>"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_ordinary_ids(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(token_id < 200000 for token_id in ids)


def test_round_trip_random_unicode(tokenizer):
    rng = random.Random(7)
    for _ in range(200):
        text = random_text(rng, rng.randrange(1, 60))
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text and max(ids) < 200000


def test_merged_words_are_single_tokens(tokenizer):
    assert len(tokenizer.encode("assistant")) == 1
    assert len(tokenizer.encode("\n\n")) == 1
    assert len(tokenizer.encode(" image")) == 1


def test_special_strings_in_text_become_special_ids(tokenizer):
    ids = tokenizer.encode("<|header_start|>user<|header_end|>\n\n<|image|>Hi<|eot|>")
    assert ids[:2] == [200005, tokenizer.token_to_id("user")]
    assert ids[2] == 200006 and ids[4] == 200090 and ids[-1] == 200008


def test_bos_only_on_request_and_post_processor_prepends_it(tokenizer, model_dir):
    assert tokenizer.encode("Hi", add_bos=True) == [200000, *tokenizer.encode("Hi")]
    raw = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert raw.encode("Hi").ids == [200000, *tokenizer.encode("Hi")]


def test_decode_skip_special_tokens(tokenizer):
    ids = [200000, *tokenizer.encode("Hello"), 200008]
    assert tokenizer.decode(ids) == "<|begin_of_text|>Hello<|eot|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello"


def test_filler_ids_decode_without_error(tokenizer):
    assert tokenizer.decode([199999, 150000, 300]).isascii()


def test_written_files(model_dir):
    built = build_llama4_standin_tokenizer()
    loaded = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
    for text in TEXTS:
        assert loaded.encode(text).ids == built.encode(text).ids
    assert (model_dir / "tokenizer.json").stat().st_size < 4_000_000
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|begin_of_text|>", "<|eot|>", "<|finetune_right_pad|>")


def test_transformers_reads_the_written_tokenizer(model_dir, tokenizer):
    hf = AutoTokenizer.from_pretrained(model_dir)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (200000, 200008, 200018)
    assert hf("Describe <|image|> this.")["input_ids"] == tokenizer.encode("Describe <|image|> this.", add_bos=True)


# --- loading per family ------------------------------------------------------------------------------------


def test_special_token_tables():
    assert LLAMA3_SPECIAL_TOKENS.family == "mllama" and LLAMA4_SPECIAL_TOKENS.family == "llama4"
    assert LLAMA3_SPECIAL_TOKENS.stops == ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
    assert LLAMA4_SPECIAL_TOKENS.stops == ("<|end_of_text|>", "<|eom|>", "<|eot|>")
    assert (LLAMA4_SPECIAL_TOKENS.bos, LLAMA4_SPECIAL_TOKENS.eos, LLAMA4_SPECIAL_TOKENS.image,
            LLAMA4_SPECIAL_TOKENS.pad) == ("<|begin_of_text|>", "<|eot|>", "<|image|>", "<|finetune_right_pad|>")


def test_default_is_llama3():
    tokenizer = load_tokenizer()
    assert tokenizer.family == "mllama" and tokenizer.eos_token_id == 128009
    direct = Tokenizer(HFTokenizer.from_file(str(packaged_tokenizer_path())))
    assert direct.family == "mllama" and direct.stop_token_ids == (128001, 128008, 128009)


def test_tokenizer_from_built_standin():
    tokenizer = Tokenizer(build_llama4_standin_tokenizer(), special=LLAMA4_SPECIAL_TOKENS)
    assert tokenizer.family == "llama4" and tokenizer.image_token_id == 200090


def test_llama4_needs_the_checkpoint_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="llama4 tokenizer needs the checkpoint's tokenizer.json") as error:
        load_tokenizer(tmp_path, LLAMA4_SPECIAL_TOKENS)
    assert str(tmp_path / "tokenizer.json") in str(error.value)
    with pytest.raises(ValueError, match="no model directory was given"):
        load_tokenizer(None, LLAMA4_SPECIAL_TOKENS)


def test_llama3_tokenizer_is_refused_as_llama4(tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(packaged_tokenizer_path().read_bytes())
    with pytest.raises(ValueError, match=r"no '<\|eot\|>' token, which the llama4 tokenizer needs"):
        load_tokenizer(tmp_path, LLAMA4_SPECIAL_TOKENS)


def test_llama4_tokenizer_is_refused_as_llama3(model_dir):
    with pytest.raises(ValueError, match=r"no '<\|eot_id\|>' token, which the mllama tokenizer needs"):
        load_tokenizer(model_dir)


def test_corrupt_llama4_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        load_tokenizer(tmp_path, LLAMA4_SPECIAL_TOKENS)
