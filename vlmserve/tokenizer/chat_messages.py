"""OpenAI-style chat messages, checked and parsed into turns that every Llama chat format renders.

A turn is a role and its content as prompt pieces: each text part a literal piece, each image part the special
`<|image|>` where it stands, plus the image sources in that order. Chat formats render to pieces too, so that
message text is always encoded as literal text (`Tokenizer.encode_pieces`) and only the format's own special
tokens (BOS, headers, end of turn, image markers of image parts) become special ids: a message spelling
`<|eot_id|>` or `<|image|>` cannot forge a turn or an image. Only a leading system message is accepted; tool
calls and tool results (the `ipython` role) are not supported.
"""

from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable

from vlmserve.tokenizer.tokenizer import IMAGE, PromptPiece

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)
PART_TYPES = ("text", "image_url", "image", "image_pil")


class ChatFormatError(ValueError):
    """Messages that cannot be rendered in a Llama chat format."""


@dataclass
class RenderedChat:
    pieces: tuple[PromptPiece, ...]  # the format's special tokens and the literal text between them
    images: list = field(default_factory=list)  # image sources as given, in prompt order

    @property
    def prompt(self) -> str:
        """The prompt for display, special tokens written out (starting with <|begin_of_text|>).

        Not for encoding: `Tokenizer.encode` would also parse special-token strings typed in message text.
        """
        return "".join(piece.text for piece in self.pieces)


@dataclass
class Turn:
    role: str
    pieces: list[PromptPiece]  # content: literal text and the <|image|> markers of image parts
    images: list

    @property
    def text(self) -> str:
        """The content as one string, which is its literal text for the image-free system turn."""
        return "".join(piece.text for piece in self.pieces)


def special(token: str) -> PromptPiece:
    return PromptPiece(token, special=True)


def literal(text: str) -> PromptPiece:
    return PromptPiece(text)


def header(start: str, role: str, end: str) -> list[PromptPiece]:
    """`{start}{role}{end}\\n\\n`, the role header of both Llama chat formats; the role is literal text."""
    return [special(start), literal(role), special(end), literal("\n\n")]


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


def render_turns(prefix: list[PromptPiece], turns: list[Turn], role_header: Callable[[str], list[PromptPiece]],
                 eot: str, *, add_generation_prompt: bool, continue_final_message: bool) -> RenderedChat:
    """`prefix`, then each turn as role_header(role) + content + eot; the last turn left open, or the assistant
    header."""
    blocks = [[*role_header(turn.role), *turn.pieces, special(eot)] for turn in turns]
    if continue_final_message:
        blocks[-1].pop()  # no eot: generation continues the final assistant message
    if add_generation_prompt:
        blocks.append(role_header(ASSISTANT))
    return RenderedChat(pieces=tuple(chain(prefix, *blocks)),
                        images=[image for turn in turns for image in turn.images])


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
    pieces, images = _parse_content(message.get("content"), role, where)
    if images and role == SYSTEM:
        raise ChatFormatError(f"{where} is a system message with an image; put images in user messages")
    return Turn(role, pieces, images)


def _parse_content(content: Any, role: str, where: str) -> tuple[list[PromptPiece], list]:
    if isinstance(content, str):
        return [literal(content)], []
    if content is None:
        if role == ASSISTANT:
            return [], []
        raise ChatFormatError(f"{where} ({role}) has no content; only assistant messages may omit it")
    if not isinstance(content, list):
        raise ChatFormatError(f"{where} content must be a string or a list of parts, got {type(content).__name__}")
    pieces, images = [], []
    for part_index, part in enumerate(content):
        piece, image = _parse_part(part, f"{where}.content[{part_index}]")
        pieces.append(piece)
        if image is not None:
            images.append(image)
    return pieces, images


def _parse_part(part: Any, where: str) -> tuple[PromptPiece, Any]:
    """(literal text, None) for a text part, (special <|image|>, image source) for an image part."""
    if not isinstance(part, dict):
        raise ChatFormatError(f"{where} must be a dict with a 'type', got {type(part).__name__}")
    part_type = part.get("type")
    if part_type == "text":
        if not isinstance(part.get("text"), str):
            raise ChatFormatError(f"{where} is a text part without a string 'text'")
        return literal(part["text"]), None
    if part_type == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise ChatFormatError(f"{where} is an image_url part without a URL string")
        return special(IMAGE), url
    if part_type in ("image", "image_pil"):
        if part.get(part_type) is None:
            raise ChatFormatError(f"{where} is an {part_type} part without its {part_type!r} field")
        return special(IMAGE), part[part_type]
    raise ChatFormatError(
        f"{where} has unknown content part type {part_type!r}; expected one of {', '.join(PART_TYPES)}")
