"""OpenAI-style chat messages, checked and parsed into turns that every Llama chat format renders.

A turn is a role and its content as prompt pieces: each text part a literal piece, each image part the special
`<|image|>` where it stands, plus the image sources in that order. Chat formats render to pieces too, so that
message text is always encoded as literal text (`Tokenizer.encode_pieces`) and only the format's own special
tokens (BOS, headers, end of turn, image markers of image parts) become special ids: a message spelling
`<|eot_id|>` or `<|image|>` cannot forge a turn or an image. Only a leading system message is accepted.

Tools: an assistant message may carry OpenAI `tool_calls` (its arguments JSON text), which each format writes the way
its model writes calls after the message's text; a `tool` message answers calls of the assistant message before it
(its `tool_call_id` among theirs) and is written under the `ipython` role as a JSON string, as both Llama formats do.
"""

import json
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable

from vlmserve.multimodal.inputs import OneTile
from vlmserve.tokenizer.tokenizer import IMAGE, PromptPiece
from vlmserve.tool_calls.render import render_calls
from vlmserve.tool_calls.types import ToolCall, ToolCallFormat

SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"
ROLES = (SYSTEM, USER, ASSISTANT, TOOL)
TOOL_RESULT_ROLE = "ipython"  # the header both Llama formats write over a tool's result
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
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls, written after its content

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
    if continue_final_message and messages[-1].get("tool_calls"):
        raise ChatFormatError("continue_final_message cannot continue an assistant message that made tool calls")


def parse_messages(messages: list[dict]) -> tuple[Turn | None, list[Turn]]:
    """The leading system turn (or None) and the other turns, in order."""
    turns = [_parse_message(message, index) for index, message in enumerate(messages)]
    _check_tool_results(messages)
    system = turns.pop(0) if turns[0].role == SYSTEM else None
    return system, turns


def render_turns(prefix: list[PromptPiece], turns: list[Turn], role_header: Callable[[str], list[PromptPiece]],
                 eot: str, tool_format: ToolCallFormat, *, add_generation_prompt: bool,
                 continue_final_message: bool) -> RenderedChat:
    """`prefix`, then each turn as role_header(role) + content (+ its tool calls) + eot; the last turn left open,
    or the assistant header."""
    blocks = [[*role_header(TOOL_RESULT_ROLE if turn.role == TOOL else turn.role), *_content(turn, tool_format),
               special(eot)] for turn in turns]
    if continue_final_message:
        blocks[-1].pop()  # no eot: generation continues the final assistant message
    if add_generation_prompt:
        blocks.append(role_header(ASSISTANT))
    return RenderedChat(pieces=tuple(chain(prefix, *blocks)),
                        images=[image for turn in turns for image in turn.images])


def _content(turn: Turn, tool_format: ToolCallFormat) -> list[PromptPiece]:
    if not turn.tool_calls:
        return turn.pieces
    return [*turn.pieces, literal(render_calls(list(turn.tool_calls), tool_format))]


def _check_tool_results(messages: list[dict]) -> None:
    """OpenAI's rule: each tool message answers a call of the assistant message before it (tool messages between)."""
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        role = message["role"]
        if role == ASSISTANT:
            call_ids = {call.get("id") for call in message.get("tool_calls") or []}
        elif role == TOOL:
            call_id = message.get("tool_call_id")
            if call_id not in call_ids:
                raise ChatFormatError(
                    f"messages[{index}] is a tool message whose tool_call_id {call_id!r} answers no tool call of "
                    "the assistant message before it")
        else:
            call_ids = set()


def _parse_message(message: Any, index: int) -> Turn:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ChatFormatError(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ChatFormatError(f"{where} has unsupported role {role!r}; expected one of {', '.join(ROLES)}")
    if role == SYSTEM and index > 0:
        raise ChatFormatError(f"{where} is a system message; only the first message may be one")
    tool_calls = _parse_tool_calls(message.get("tool_calls"), role, where)
    if role == TOOL:
        return Turn(role, [literal(_tool_result(message.get("content"), where))], [])
    pieces, images = _parse_content(message.get("content"), role, where)
    if images and role == SYSTEM:
        raise ChatFormatError(f"{where} is a system message with an image; put images in user messages")
    return Turn(role, pieces, images, tool_calls)


def _parse_tool_calls(calls: Any, role: str, where: str) -> tuple[ToolCall, ...]:
    if not calls:
        return ()
    if role != ASSISTANT:
        raise ChatFormatError(f"{where} has tool_calls; only assistant messages make tool calls")
    return tuple(_parse_tool_call(call, f"{where}.tool_calls[{index}]") for index, call in enumerate(calls))


def _parse_tool_call(call: Any, where: str) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
        raise ChatFormatError(f"{where} needs a function with a name")
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ChatFormatError(f"{where}.function.arguments must be a JSON object as text, got {arguments!r}")
    return ToolCall(function["name"], parsed)


def _tool_result(content: Any, where: str) -> str:
    """A tool's result as both Llama formats write it: its text as a JSON string."""
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        content = "".join(str(part.get("text", "")) for part in content)
    if not isinstance(content, str):
        raise ChatFormatError(f"{where} is a tool message; its content must be text or text parts")
    return json.dumps(content, ensure_ascii=False)


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


def _with_detail(source: Any, detail: Any, where: str) -> Any:
    """The image source, marked to be processed as one tile for OpenAI's detail "low"."""
    if detail not in (None, "auto", "high", "low"):
        raise ChatFormatError(f"{where} must be 'auto', 'high' or 'low', got {detail!r}")
    return OneTile(source) if detail == "low" else source


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
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str) or not url:
            raise ChatFormatError(f"{where} is an image_url part without a URL string")
        return special(IMAGE), _with_detail(url, image_url.get("detail") if isinstance(image_url, dict) else None,
                                            f"{where}.image_url.detail")
    if part_type in ("image", "image_pil"):
        if part.get(part_type) is None:
            raise ChatFormatError(f"{where} is an {part_type} part without its {part_type!r} field")
        return special(IMAGE), _with_detail(part[part_type], part.get("detail"), f"{where}.detail")
    raise ChatFormatError(
        f"{where} has unknown content part type {part_type!r}; expected one of {', '.join(PART_TYPES)}")
