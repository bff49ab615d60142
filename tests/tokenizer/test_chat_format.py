"""The Llama 3.2 Vision Instruct chat format: rendered strings (model_spec §F.2) and token ids."""

import datetime

import pytest
from PIL import Image

from tests.tokenizer.helpers import image_url, text, user
from vlmserve.families.chat import encode_chat
from vlmserve.tokenizer.chat_format import ChatFormatError, render_chat
from vlmserve.tokenizer.tokenizer import Tokenizer, load_tokenizer

DATE = "26 Jul 2024"
BOS, START, END, EOT, IMAGE = 128000, 128006, 128007, 128009, 128256
SYSTEM, USER, ASSISTANT, DOUBLE_NEWLINE, HELLO = 9125, 882, 78191, 271, 9906
GENERATION_PROMPT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
PREAMBLE = f"Cutting Knowledge Date: December 2023\nToday Date: {DATE}\n\n"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer()


def header_ids(role_id: int) -> list[int]:
    return [START, role_id, END, DOUBLE_NEWLINE]


# --- published examples (model_spec §F.2) -----------------------------------------------------------------


def test_text_with_system_prompt(tokenizer):
    messages = [{"role": "system", "content": "You are helpful."}, user("Hello")]
    rendered = render_chat(messages, date_string=DATE)
    assert rendered.prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\nYou are helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Hello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert rendered.images == []
    ids, images = encode_chat(tokenizer, messages, date_string=DATE)
    assert ids == ([BOS, *header_ids(SYSTEM), *tokenizer.encode(PREAMBLE + "You are helpful."), EOT,
                    *header_ids(USER), HELLO, EOT, *header_ids(ASSISTANT)])
    assert images == []


def test_text_without_system_prompt_still_has_system_block(tokenizer):
    rendered = render_chat([user("Hello")], date_string=DATE)
    assert rendered.prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids, _ = encode_chat(tokenizer, [user("Hello")], date_string=DATE)
    assert ids == [BOS, *header_ids(SYSTEM), *tokenizer.encode(PREAMBLE), EOT, *header_ids(USER), HELLO, EOT,
                   *header_ids(ASSISTANT)]


def test_one_image_without_system_prompt(tokenizer):
    messages = [user({"type": "image", "image": "cat.png"}, text("Describe this image."))]
    rendered = render_chat(messages)
    assert rendered.prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>Describe this image.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert rendered.images == ["cat.png"]
    ids, images = encode_chat(tokenizer, messages)
    assert ids == [BOS, *header_ids(USER), IMAGE, 75885, 420, 2217, 13, EOT, *header_ids(ASSISTANT)]
    assert images == ["cat.png"]


# --- our decisions around the published format ------------------------------------------------------------


def test_system_text_is_stripped_without_images():
    messages = [{"role": "system", "content": [text("  You are helpful.\n")]}, user("Hello")]
    assert f"{PREAMBLE}You are helpful.<|eot_id|>" in render_chat(messages, date_string=DATE).prompt


def test_date_defaults_to_today():
    today = datetime.date.today().strftime("%d %b %Y")
    assert f"Today Date: {today}\n\n" in render_chat([user("Hello")]).prompt


def test_one_image_with_system_prompt_follows_meta_reference(tokenizer):
    messages = [{"role": "system", "content": "You are helpful."},
                user(image_url("https://example.com/a.jpg"), text("What is this?"))]
    rendered = render_chat(messages)
    assert rendered.prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<|image|>What is this?<|eot_id|>" + GENERATION_PROMPT)
    assert rendered.images == ["https://example.com/a.jpg"]
    ids, _ = encode_chat(tokenizer, messages)
    assert ids[:5] == [BOS, *header_ids(SYSTEM)] and ids.count(IMAGE) == 1 and ids.count(BOS) == 1


def test_two_images_in_one_turn_keep_order_and_identity():
    picture = Image.new("RGB", (4, 4))
    raw = b"\x89PNG..."
    messages = [user(text("Compare "), image_url("http://x/1.png"), text(" with "),
                     {"type": "image_pil", "image_pil": picture}, text(" and "), {"type": "image", "image": raw})]
    rendered = render_chat(messages)
    assert rendered.prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Compare <|image|> with <|image|> and <|image|><|eot_id|>" + GENERATION_PROMPT)
    assert rendered.images[0] == "http://x/1.png"
    assert rendered.images[1] is picture and rendered.images[2] is raw


def test_images_across_turns(tokenizer):
    messages = [
        user({"type": "image_url", "image_url": "data:image/png;base64,AAAA"}, text("What is it?")),
        {"role": "assistant", "content": "A cat."},
        user(text("And this one?"), {"type": "image", "image": "/tmp/dog.jpg"}),
    ]
    rendered = render_chat(messages)
    assert rendered.prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd this one?<|image|><|eot_id|>" + GENERATION_PROMPT)
    assert rendered.images == ["data:image/png;base64,AAAA", "/tmp/dog.jpg"]
    ids, _ = encode_chat(tokenizer, messages)
    # first image right after the first user header; second one closes the last user turn
    assert ids[5] == IMAGE and ids[-6:-4] == [IMAGE, EOT] and ids.count(IMAGE) == 2


def test_multi_turn_text_with_assistant_history(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, user("Hi"),
                {"role": "assistant", "content": "Hello!"}, user("Bye")]
    rendered = render_chat(messages, date_string=DATE)
    assert rendered.prompt == (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{PREAMBLE}Be brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>" + GENERATION_PROMPT)
    ids, _ = encode_chat(tokenizer, messages, date_string=DATE)
    assert ids.count(START) == 5 and ids.count(EOT) == 4 and ids[-4:] == header_ids(ASSISTANT)


def test_without_generation_prompt():
    prompt = render_chat([user("Hi")], add_generation_prompt=False, date_string=DATE).prompt
    assert prompt.endswith("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


def test_assistant_content_none_renders_empty():
    messages = [user("Hi"), {"role": "assistant", "content": None}, user("Again")]
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>" in render_chat(messages).prompt


def test_continue_final_message(tokenizer):
    messages = [user("Count to three."), {"role": "assistant", "content": "One, two,"}]
    rendered = render_chat(messages, add_generation_prompt=False, continue_final_message=True, date_string=DATE)
    assert rendered.prompt.endswith(
        "<|start_header_id|>user<|end_header_id|>\n\nCount to three.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nOne, two,")
    ids, _ = encode_chat(tokenizer, messages, add_generation_prompt=False, continue_final_message=True,
                         date_string=DATE)
    open_turn = [*header_ids(ASSISTANT), *tokenizer.encode("One, two,")]
    assert ids[-len(open_turn):] == open_turn


@pytest.mark.parametrize("messages, options, message", [
    ([], {}, "messages is empty"),
    ([{"role": "tool", "content": "42"}], {}, r"messages\[0\] is a tool message whose tool_call_id None answers no"),
    ([{"role": "developer", "content": "x"}], {}, "'developer'"),
    ([{"content": "no role"}], {}, "role None"),
    ([user("Hi"), {"role": "system", "content": "late"}], {}, r"messages\[1\] is a system message"),
    ([user("Hi"), {"role": "assistant", "content": "x"}], {"continue_final_message": True},
     "cannot both be true"),
    ([user("Hi")], {"continue_final_message": True, "add_generation_prompt": False}, "last message"),
    ([user({"type": "audio", "audio": "a.wav"})], {}, "unknown content part type 'audio'"),
    ([{"role": "user", "content": None}], {}, r"messages\[0\] \(user\) has no content"),
    ([{"role": "user", "content": 7}], {}, "string or a list of parts, got int"),
    (["Hi"], {}, r"messages\[0\] must be a dict"),
    ([user("Hi", "there")], {}, r"content\[0\] must be a dict"),
    ([user({"type": "text", "text": None})], {}, "text part without a string"),
    ([user({"type": "image_url", "image_url": {}})], {}, "image_url part without a URL"),
    ([user({"type": "image"})], {}, "image part without its 'image' field"),
    ([user({"type": "image_pil"})], {}, "image_pil part without its 'image_pil' field"),
    ([{"role": "system", "content": [image_url("http://x/1.png")]}, user("Hi")], {}, "system message with an image"),
    ([user("Hi"), {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}], {}, "tool_calls"),
])
def test_errors(messages, options, message):
    with pytest.raises(ChatFormatError, match=message):
        render_chat(messages, **options)


def test_chat_format_error_is_a_value_error():
    assert issubclass(ChatFormatError, ValueError)
