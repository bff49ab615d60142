"""OpenAI-style chat messages -> the Llama 3.2 Vision Instruct prompt.

Layout: `<|begin_of_text|>`, a system block, then per message
`<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`, then (if asked) the generation prompt
`<|start_header_id|>assistant<|end_header_id|>\\n\\n`. Content parts are concatenated with no separators and
each image part becomes `<|image|>` where it stands.

The system block is where the two published formats disagree, so we choose per conversation:
- Without images we match the Hub Instruct chat template exactly: a system block is always written, as
  "Cutting Knowledge Date: December 2023\\nToday Date: {date}\\n\\n" + the stripped system text (empty if there
  is no system message). The date defaults to today, "%d %b %Y", as transformers renders it.
- With images the Hub template writes no system block and refuses a system message. We follow Meta's
  reference chat format instead: the system text is written as given, with no date preamble, and only when
  a system message is present.
Only a leading system message is accepted. Tool calls and tool results (the `ipython` role) are not supported.
"""

import datetime
from dataclasses import dataclass, field
from typing import Any

from vlmserve.tokenizer.tokenizer import BEGIN_OF_TEXT, EOT, IMAGE, Tokenizer

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)
PART_TYPES = ("text", "image_url", "image", "image_pil")
KNOWLEDGE_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
DATE_FORMAT = "%d %b %Y"


class ChatFormatError(ValueError):
    """Messages that cannot be rendered in the Llama 3.2 Vision chat format."""


@dataclass
class RenderedChat:
    prompt: str  # special tokens written out, starting with <|begin_of_text|>
    images: list = field(default_factory=list)  # image sources as given, in prompt order


@dataclass
class _Turn:
    role: str
    text: str  # content with <|image|> markers in place
    images: list


def render_chat(messages: list[dict], *, add_generation_prompt: bool = True, continue_final_message: bool = False,
                date_string: str | None = None) -> RenderedChat:
    """Render `messages` as a prompt string plus the image sources in the order their markers appear.

    `continue_final_message` leaves the final assistant message open (no `<|eot_id|>`) so generation
    continues it; it excludes `add_generation_prompt`. `date_string` replaces today's date in the system block
    of image-free conversations.
    """
    _check_options(messages, add_generation_prompt, continue_final_message)
    turns = [_parse_message(message, index) for index, message in enumerate(messages)]
    system = turns.pop(0) if turns[0].role == SYSTEM else None
    has_images = any(turn.images for turn in turns)
    blocks = [BEGIN_OF_TEXT, _system_block(system, has_images, date_string)]
    blocks += [_header(turn.role) + turn.text + EOT for turn in turns]
    if continue_final_message:
        blocks[-1] = blocks[-1].removesuffix(EOT)
    if add_generation_prompt:
        blocks.append(_header(ASSISTANT))
    return RenderedChat(prompt="".join(blocks), images=[image for turn in turns for image in turn.images])


def encode_chat(tokenizer: Tokenizer, messages: list[dict], **options: Any) -> tuple[list[int], list]:
    """Token ids of the rendered chat (no extra BOS) and its image sources; options as for `render_chat`."""
    rendered = render_chat(messages, **options)
    return tokenizer.encode(rendered.prompt), rendered.images


def _check_options(messages: list[dict], add_generation_prompt: bool, continue_final_message: bool) -> None:
    if not messages:
        raise ChatFormatError("messages is empty; at least one message is needed")
    if add_generation_prompt and continue_final_message:
        raise ChatFormatError("add_generation_prompt and continue_final_message cannot both be true")
    if continue_final_message and not (isinstance(messages[-1], dict) and messages[-1].get("role") == ASSISTANT):
        raise ChatFormatError("continue_final_message needs the last message to be from the assistant")


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _system_block(system: _Turn | None, has_images: bool, date_string: str | None) -> str:
    if has_images:
        return "" if system is None else _header(SYSTEM) + system.text + EOT
    date = date_string if date_string is not None else datetime.date.today().strftime(DATE_FORMAT)
    system_text = system.text.strip() if system is not None else ""
    return _header(SYSTEM) + KNOWLEDGE_PREAMBLE.format(date=date) + system_text + EOT


def _parse_message(message: Any, index: int) -> _Turn:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ChatFormatError(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ChatFormatError(f"{where} has unsupported role {role!r}; expected one of {', '.join(ROLES)}")
    if role == SYSTEM and index > 0:
        raise ChatFormatError(f"{where} is a system message; only the first message may be one")
    if message.get("tool_calls"):
        raise ChatFormatError(f"{where} has tool_calls, which this chat format does not support")
    text, images = _parse_content(message.get("content"), role, where)
    if images and role == SYSTEM:
        raise ChatFormatError(f"{where} is a system message with an image; put images in user messages")
    return _Turn(role, text, images)


def _parse_content(content: Any, role: str, where: str) -> tuple[str, list]:
    if isinstance(content, str):
        return content, []
    if content is None:
        if role == ASSISTANT:
            return "", []
        raise ChatFormatError(f"{where} ({role}) has no content; only assistant messages may omit it")
    if not isinstance(content, list):
        raise ChatFormatError(f"{where} content must be a string or a list of parts, got {type(content).__name__}")
    pieces, images = [], []
    for part_index, part in enumerate(content):
        piece, image = _parse_part(part, f"{where}.content[{part_index}]")
        pieces.append(piece)
        if image is not None:
            images.append(image)
    return "".join(pieces), images


def _parse_part(part: Any, where: str) -> tuple[str, Any]:
    """(text, None) for a text part, (<|image|>, image source) for an image part."""
    if not isinstance(part, dict):
        raise ChatFormatError(f"{where} must be a dict with a 'type', got {type(part).__name__}")
    part_type = part.get("type")
    if part_type == "text":
        if not isinstance(part.get("text"), str):
            raise ChatFormatError(f"{where} is a text part without a string 'text'")
        return part["text"], None
    if part_type == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise ChatFormatError(f"{where} is an image_url part without a URL string")
        return IMAGE, url
    if part_type in ("image", "image_pil"):
        if part.get(part_type) is None:
            raise ChatFormatError(f"{where} is an {part_type} part without its {part_type!r} field")
        return IMAGE, part[part_type]
    raise ChatFormatError(
        f"{where} has unknown content part type {part_type!r}; expected one of {', '.join(PART_TYPES)}")
