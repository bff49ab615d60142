"""OpenAI-style chat messages, checked and parsed into turns that every Llama chat format renders.

A turn is a role and its content as one string: text parts concatenated with no separators and each image part
replaced by `<|image|>` where it stands, plus the image sources in that order. Only a leading system message is
accepted; tool calls and tool results (the `ipython` role) are not supported.
"""

from dataclasses import dataclass, field
from typing import Any, Callable

from vlmserve.tokenizer.tokenizer import IMAGE

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)
PART_TYPES = ("text", "image_url", "image", "image_pil")


class ChatFormatError(ValueError):
    """Messages that cannot be rendered in a Llama chat format."""


@dataclass
class RenderedChat:
    prompt: str  # special tokens written out, starting with <|begin_of_text|>
    images: list = field(default_factory=list)  # image sources as given, in prompt order


@dataclass
class Turn:
    role: str
    text: str  # content with <|image|> markers in place
    images: list


def check_options(messages: list[dict], add_generation_prompt: bool, continue_final_message: bool) -> None:
    """Refuse an empty conversation and contradictory or unusable generation options."""
    if not messages:
        raise ChatFormatError("messages is empty; at least one message is needed")
    if add_generation_prompt and continue_final_message:
        raise ChatFormatError("add_generation_prompt and continue_final_message cannot both be true")
    if continue_final_message and not (isinstance(messages[-1], dict) and messages[-1].get("role") == ASSISTANT):
        raise ChatFormatError("continue_final_message needs the last message to be from the assistant")


def parse_messages(messages: list[dict]) -> tuple[Turn | None, list[Turn]]:
    """The leading system turn (or None) and the other turns, in order."""
    turns = [_parse_message(message, index) for index, message in enumerate(messages)]
    system = turns.pop(0) if turns[0].role == SYSTEM else None
    return system, turns


def render_turns(prefix: str, turns: list[Turn], header: Callable[[str], str], eot: str, *,
                 add_generation_prompt: bool, continue_final_message: bool) -> RenderedChat:
    """`prefix`, then each turn as header(role) + text + eot; the last turn left open, or the assistant header."""
    blocks = [header(turn.role) + turn.text + eot for turn in turns]
    if continue_final_message:
        blocks[-1] = blocks[-1].removesuffix(eot)
    if add_generation_prompt:
        blocks.append(header(ASSISTANT))
    return RenderedChat(prompt=prefix + "".join(blocks), images=[image for turn in turns for image in turn.images])


def _parse_message(message: Any, index: int) -> Turn:
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
    return Turn(role, text, images)


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
