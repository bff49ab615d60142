"""The Llama 4 Instruct chat format: equal to transformers' Llama 4 chat template, and the family dispatch."""

import pytest
from transformers.models.llama4.processing_llama4 import chat_template as HF_CHAT_TEMPLATE
from transformers.utils.chat_template_utils import render_jinja_template

from tests.tokenizer.helpers import image_url, text, user
from vlmserve.families.chat import encode_chat, render_family_chat
from vlmserve.tokenizer.chat_format import ChatFormatError
from vlmserve.tokenizer.llama4_chat_format import render_llama4_chat
from vlmserve.tokenizer.llama4_standin import build_llama4_standin_tokenizer
from vlmserve.tokenizer.tokenizer import LLAMA4_SPECIAL_TOKENS, Tokenizer, load_tokenizer

BOS, HEADER_START, HEADER_END, EOT, IMAGE = 200000, 200005, 200006, 200008, 200090


def image(source: str) -> dict:
    return {"type": "image", "image": source}


def system(content) -> dict:
    return {"role": "system", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}


CONVERSATIONS = {
    "text": [user("Hello")],
    "system+text": [system("You are helpful."), user("Hello")],
    "system+image": [system("You are helpful."), user(image("a.png"), text("Describe."))],
    "image only": [user(image("a.png"))],
    "two images one turn": [user(text("Compare "), image("a.png"), text(" with "), image("b.png"))],
    "multi-turn images": [user(image("a.png"), text("What is it?")), assistant("A cat."),
                          user(text("And this one?"), image("b.png")), assistant("A dog."), user("Thanks!")],
    "system trimmed": [system("  Be brief.\n\n"), user(" spaced \n")],
    "system as parts": [system([text("Answer in French.")]), user("Hi")],
    "unicode": [user("Grüße 日本語 🎉\n\nnew paragraph"), assistant("こんにちは"), user("👍")],
    "empty assistant": [user("Hi"), assistant(""), user("Again")],
}


def header_ids(tokenizer: Tokenizer, role: str) -> list[int]:
    return [HEADER_START, *tokenizer.encode(role), HEADER_END, *tokenizer.encode("\n\n")]


def hf_render(messages: list[dict], **options) -> str:
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=HF_CHAT_TEMPLATE,
                                        bos_token="<|begin_of_text|>", **options)
    return rendered[0]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(build_llama4_standin_tokenizer(), special=LLAMA4_SPECIAL_TOKENS)


@pytest.mark.parity
@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_hf_chat_template(name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    rendered = render_llama4_chat(messages, add_generation_prompt=add_generation_prompt)
    assert rendered.prompt == hf_render(messages, add_generation_prompt=add_generation_prompt)


@pytest.mark.parity
@pytest.mark.parametrize("final", ["One, two,", [text("One, "), text("two,")]])
def test_continue_final_message_matches_hf(final):
    messages = [user("Count to three."), assistant(final)]
    rendered = render_llama4_chat(messages, add_generation_prompt=False, continue_final_message=True)
    assert rendered.prompt == hf_render(messages, continue_final_message=True)
    assert rendered.prompt.endswith("<|header_start|>assistant<|header_end|>\n\nOne, two,")


def test_spec_example():
    rendered = render_llama4_chat(CONVERSATIONS["system+image"])
    assert rendered.prompt == (
        "<|begin_of_text|><|header_start|>system<|header_end|>\n\nYou are helpful.<|eot|>"
        "<|header_start|>user<|header_end|>\n\n<|image|>Describe.<|eot|><|header_start|>assistant<|header_end|>\n\n")
    assert rendered.images == ["a.png"]


def test_images_in_prompt_order_with_openai_parts():
    messages = [user(image_url("http://x/1.png"), text("and")),
                assistant("ok"), user(image("/tmp/2.png"))]
    rendered = render_llama4_chat(messages)
    assert rendered.images == ["http://x/1.png", "/tmp/2.png"]
    assert rendered.prompt.count("<|image|>") == 2


def test_encode_chat_uses_the_llama4_format(tokenizer):
    ids, images = encode_chat(tokenizer, CONVERSATIONS["system+image"])
    encode = tokenizer.encode
    assert ids == [BOS, *header_ids(tokenizer, "system"), *encode("You are helpful."), EOT,
                   *header_ids(tokenizer, "user"), IMAGE, *encode("Describe."), EOT,
                   *header_ids(tokenizer, "assistant")]
    assert images == ["a.png"]
    assert ids.count(BOS) == 1


def test_encode_chat_accepts_a_none_date_string(tokenizer):
    ids, _ = encode_chat(tokenizer, [user("Hi")], date_string=None)
    assert ids == tokenizer.encode(render_llama4_chat([user("Hi")]).prompt)


def test_encode_chat_refuses_a_date_string(tokenizer):
    with pytest.raises(ChatFormatError, match="date_string='26 Jul 2024' is a Llama 3.2 chat option"):
        encode_chat(tokenizer, [user("Hi")], date_string="26 Jul 2024")


def test_llama3_tokenizer_keeps_the_llama3_format():
    ids, _ = encode_chat(load_tokenizer(), [user("Hello")], date_string="26 Jul 2024")
    assert ids[:2] == [128000, 128006]


def test_render_family_chat():
    messages = CONVERSATIONS["system+text"]
    assert render_family_chat("llama4", messages) == render_llama4_chat(messages)
    assert "<|start_header_id|>" in render_family_chat("mllama", messages, date_string="1 Jan 2025").prompt
    with pytest.raises(ChatFormatError, match="no chat format for model family 'qwen2'"):
        render_family_chat("qwen2", messages)


@pytest.mark.parametrize("messages, options, message", [
    ([], {}, "messages is empty"),
    ([{"role": "tool", "content": "42"}], {}, r"messages\[0\] is a tool message whose tool_call_id None answers no"),
    ([user("Hi"), system("late")], {}, r"messages\[1\] is a system message"),
    ([user("Hi"), assistant("x")], {"continue_final_message": True}, "cannot both be true"),
    ([user("Hi")], {"continue_final_message": True, "add_generation_prompt": False}, "last message"),
    ([user({"type": "audio", "audio": "a.wav"})], {}, "unknown content part type 'audio'"),
    ([system([image("a.png")]), user("Hi")], {}, "system message with an image"),
])
def test_errors(messages, options, message):
    with pytest.raises(ChatFormatError, match=message):
        render_llama4_chat(messages, **options)
