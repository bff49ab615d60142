"""OpenAI-style chat messages -> the Llama 3.2 Vision Instruct prompt.

Layout: `<|begin_of_text|>`, a system block, then per message
`<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`, then (if asked) the generation prompt
`<|start_header_id|>assistant<|end_header_id|>\\n\\n`. Content parts are concatenated with no separators and
each image part becomes `<|image|>` where it stands. The chat is rendered as pieces (chat_messages): those special
tokens are the only ones in the prompt, and message text is encoded as literal text whatever it spells.

The system block is where the two published formats disagree, so we choose per conversation:
- Without images we match the Hub Instruct chat template exactly: a system block is always written, as
  "Cutting Knowledge Date: December 2023\\nToday Date: {date}\\n\\n" + the stripped system text (empty if there
  is no system message). The date defaults to today, "%d %b %Y", as transformers renders it.
- With images the Hub template writes no system block and refuses a system message. We follow Meta's
  reference chat format instead: the system text is written as given, with no date preamble, and only when
  a system message is present.
Only a leading system message is accepted.

Tools follow the Hub template's JSON tool calling (Meta's Llama 3.1 format, which Llama 3.2 Vision keeps for text):
"Environment: ipython" opens the system block, the tool definitions and how to call them open the first user
message, the model answers a call as `{"name": ..., "parameters": {...}}` (after `<|python_tag|>`, ending with
`<|eom_id|>`, when it follows Meta's own prompt), and tool results come back under the `ipython` role (chat_messages).
Meta's prompt format says tool calling does not work with images in the prompt, so tools with images are refused.
Each model family names its chat format (vlmserve/families); `encode_chat` there renders a chat in the tokenizer's.
"""

import datetime
import json

from vlmserve.tokenizer.chat_messages import (
    SYSTEM,
    USER,
    ChatFormatError,
    RenderedChat,
    Turn,
    check_options,
    header,
    literal,
    parse_messages,
    render_turns,
    special,
)
from vlmserve.tokenizer.tokenizer import BEGIN_OF_TEXT, EOT, PromptPiece
from vlmserve.tool_calls.types import Tool, ToolCallFormat

KNOWLEDGE_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
DATE_FORMAT = "%d %b %Y"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
TOOL_FORMAT: ToolCallFormat = "json"
TOOLS_ENVIRONMENT = "Environment: ipython\n"
TOOLS_INSTRUCTION = ("Given the following functions, please respond with a JSON for a function call with its proper "
                     "arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function "
                     "name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n")

__all__ = ["ChatFormatError", "RenderedChat", "render_chat"]


def render_chat(messages: list[dict], *, add_generation_prompt: bool = True, continue_final_message: bool = False,
                date_string: str | None = None, tools: list[Tool] | None = None) -> RenderedChat:
    """Render `messages` as prompt pieces plus the image sources in the order their markers appear.

    `continue_final_message` leaves the final assistant message open (no `<|eot_id|>`) so generation
    continues it; it excludes `add_generation_prompt`. `date_string` replaces today's date in the system block
    of image-free conversations. `tools` (not with images) are offered in the first user message.
    """
    check_options(messages, add_generation_prompt, continue_final_message)
    system, turns = parse_messages(messages)
    has_images = any(turn.images for turn in turns)
    if tools and has_images:
        raise ChatFormatError("Llama 3.2 Vision cannot call tools with an image in the prompt (Meta's prompt format:"
                              " tool calling does not work with images); send the images without tools, or set "
                              "tool_choice to 'none'")
    if tools:
        _offer_tools(turns, tools)
    prefix = [special(BEGIN_OF_TEXT), *_system_block(system, has_images, date_string, bool(tools))]
    return render_turns(prefix, turns, _header, EOT, TOOL_FORMAT, add_generation_prompt=add_generation_prompt,
                        continue_final_message=continue_final_message)


def _offer_tools(turns: list[Turn], tools: list[Tool]) -> None:
    """The tool definitions and how to call them, before the first user message's text."""
    first_user = next((turn for turn in turns if turn.role == USER), None)
    if first_user is None:
        raise ChatFormatError("tools are offered in the first user message, and there is none")
    definitions = "".join(json.dumps({"type": "function", "function": tool.definition()}, indent=4,
                                     ensure_ascii=False) + "\n\n" for tool in tools)
    first_user.pieces.insert(0, literal(TOOLS_INSTRUCTION + definitions))


def _header(role: str) -> list[PromptPiece]:
    return header(START_HEADER, role, END_HEADER)


def _system_block(system: Turn | None, has_images: bool, date_string: str | None,
                  has_tools: bool) -> list[PromptPiece]:
    if has_images:
        return [] if system is None else [*_header(SYSTEM), *system.pieces, special(EOT)]
    date = date_string if date_string is not None else datetime.date.today().strftime(DATE_FORMAT)
    system_text = system.text.strip() if system is not None else ""
    environment = TOOLS_ENVIRONMENT if has_tools else ""
    return [*_header(SYSTEM), literal(environment + KNOWLEDGE_PREAMBLE.format(date=date) + system_text),
            special(EOT)]
