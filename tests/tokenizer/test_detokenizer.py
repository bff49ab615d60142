"""Incremental detokenization: streamed deltas add up to a full decode and never split a character."""

import random

import pytest

from vlmserve.families.chat import encode_chat
from vlmserve.tokenizer.detokenizer import IncrementalDetokenizer
from vlmserve.tokenizer.tokenizer import Tokenizer, load_tokenizer

PHRASES = [
    "The quick brown fox", " jumps over", " the lazy dog.", "\n\n", "Grüße", " naïve café", " ñandú",
    " 日本語の文章", "中文文本测试", " 한국어", " Здравствуй, мир", " مرحبا", " हिन्दी पाठ", " ελληνικά",
    " 🎉", "👍🏽", " 👨‍👩‍👧‍👦", " 🇫🇷🇯🇵", " 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", " ∑∫√", "  ", "\t", "123456",
]
EMOJI = [9468, 236, 231]  # "🎉" is three byte-level tokens


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer()


def stream(detokenizer: IncrementalDetokenizer, token_ids: list[int]) -> list[str]:
    return [detokenizer.step([token_id]) for token_id in token_ids]


@pytest.mark.parametrize("seed", range(8))
def test_streaming_matches_full_decode(tokenizer, seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(PHRASES) for _ in range(rng.randint(20, 60)))
    token_ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = stream(detokenizer, token_ids)
    assert "".join(deltas) == tokenizer.decode(token_ids) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert detokenizer.flush() == ""


def test_partial_character_is_held_back(tokenizer):
    assert tokenizer.decode(EMOJI) == "🎉"
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert stream(detokenizer, tokenizer.encode("Party") + EMOJI) == ["Party", "", "", "🎉"]


def test_prompt_is_context_not_output(tokenizer):
    prompt_ids, _ = encode_chat(tokenizer, [{"role": "user", "content": "Hi"}], date_string="26 Jul 2024")
    prompt_copy = list(prompt_ids)
    output_ids = tokenizer.encode("Hello! 👋 Wie geht's?") + [tokenizer.eos_token_id]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    assert "".join(stream(detokenizer, output_ids)) == "Hello! 👋 Wie geht's?"
    assert prompt_ids == prompt_copy


def test_several_ids_per_step(tokenizer):
    token_ids = tokenizer.encode("¿Qué tal? 🙂 ok")
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.step(token_ids[i:i + 3]) for i in range(0, len(token_ids), 3)]
    assert "".join(deltas) == "¿Qué tal? 🙂 ok"


@pytest.mark.parametrize("skip, expected", [(True, "Hi there"), (False, "Hi<|image|> there<|eot_id|>")])
def test_skip_special_tokens(tokenizer, skip, expected):
    token_ids = tokenizer.encode("Hi<|image|> there<|eot_id|>")
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
    deltas = stream(detokenizer, token_ids)
    assert "".join(deltas) == expected
    assert tokenizer.decode(token_ids, skip_special_tokens=skip) == expected


def test_flush_returns_held_back_text(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert stream(detokenizer, tokenizer.encode("cut") + EMOJI[:2]) == ["cut", "", ""]
    held_back = detokenizer.flush()
    assert held_back and set(held_back) == {"\ufffd"}
    assert detokenizer.flush() == ""


class DecodeSpy(Tokenizer):
    """The real tokenizer, recording how many ids each decode call sees."""

    def __init__(self, tokenizer: Tokenizer):
        self.__dict__.update(tokenizer.__dict__)
        self.decode_lengths: list[int] = []

    def decode(self, ids, *, skip_special_tokens=False):
        self.decode_lengths.append(len(ids))
        return super().decode(ids, skip_special_tokens=skip_special_tokens)


def test_each_step_decodes_a_bounded_window(tokenizer):
    spy = DecodeSpy(tokenizer)
    token_ids = tokenizer.encode(" ".join(PHRASES) * 20)
    assert len(token_ids) > 1000
    detokenizer = IncrementalDetokenizer(spy, list(range(1000, 1100)))
    stream(detokenizer, token_ids)
    assert max(spy.decode_lengths) <= 10
