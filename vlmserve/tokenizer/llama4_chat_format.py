"""OpenAI-style chat messages -> the Llama 4 Instruct prompt (model_spec G.6).

Layout: `<|begin_of_text|>`, a system block only when a system message is given
(`<|header_start|>system<|header_end|>\\n\\n{stripped system text}<|eot|>`, images allowed beside it), then per
message `<|header_start|>{role}<|header_end|>\\n\\n{content}<|eot|>`, then (if asked) the generation prompt
`<|header_start|>assistant<|header_end|>\\n\\n`. Content parts are concatenated with no separators and each image
part becomes `<|image|>` where it stands; the processor later expands each one into the image's tile tokens.
The chat is rendered as pieces (chat_messages): those special tokens are the only ones in the prompt, and message
text is encoded as literal text whatever it spells.

This matches transformers' Llama 4 chat template, except that a system message given as several text parts
keeps all of them (the template keeps only the first).

Tools follow Meta's Llama 4 prompt format (zero-shot function calling in the system message), not transformers'
template (JSON calls): the system block holds the client's system text, then Meta's instructions and the tool
definitions as a JSON list; the model answers with a pythonic list of calls, `[f(a=1), g(b="x")]`, and tool results
come back under the `ipython` role (chat_messages). Images may go with tools.
"""

import json

from vlmserve.tokenizer.chat_messages import (
    SYSTEM,
    ChatFormatError,
    RenderedChat,
    check_options,
    header,
    literal,
    parse_messages,
    render_turns,
    special,
)
from vlmserve.tokenizer.tokenizer import LLAMA4_SPECIAL_TOKENS, PromptPiece
from vlmserve.tool_calls.types import Tool, ToolCallFormat

EOT = LLAMA4_SPECIAL_TOKENS.eos  # <|eot|>
HEADER_START, HEADER_END = "<|header_start|>", "<|header_end|>"
TOOL_FORMAT: ToolCallFormat = "pythonic"
# Meta's system prompt for zero-shot function calling (llama-models, models/llama4/prompt_format.md).
TOOLS_INSTRUCTION = """You are a helpful assistant and an expert in function composition. You can answer general \
questions using your internal knowledge OR invoke functions when necessary. Follow these strict guidelines:

1. FUNCTION CALLS:
- ONLY use functions that are EXPLICITLY listed in the function list below
- If NO functions are listed (empty function list []), respond ONLY with internal knowledge or "I don't have access \
to [Unavailable service] information"
- If a function is not in the list, respond ONLY with internal knowledge or "I don't have access to [Unavailable \
service] information"
- If ALL required parameters are present AND the query EXACTLY matches a listed function's purpose: output ONLY the \
function call(s)
- Use exact format: [func_name1(param1=value1, param2=value2), func_name2(...)]
Examples:
CORRECT: [get_weather(location="Vancouver"), calculate_route(start="Boston", end="New York")] <- Only if \
get_weather and calculate_route are in function list
INCORRECT: get_weather(location="New York")
INCORRECT: Let me check the weather: [get_weather(location="New York")]
INCORRECT: [get_events(location="Singapore")] <- If function not in list

2. RESPONSE RULES:
- For pure function requests matching a listed function: ONLY output the function call(s)
- For knowledge questions: ONLY output text
- For missing parameters: ONLY request the specific missing parameters
- For unavailable services (not in function list): output ONLY with internal knowledge or "I don't have access to \
[Unavailable service] information". Do NOT execute a function call.
- If the query asks for information beyond what a listed function provides: output ONLY with internal knowledge \
about your limitations
- NEVER combine text and function calls in the same response
- NEVER suggest alternative functions when the requested service is unavailable
- NEVER create or invent new functions not listed below

3. STRICT BOUNDARIES:
- ONLY use functions from the list below - no exceptions
- NEVER use a function as an alternative to unavailable information
- NEVER call functions not present in the function list
- NEVER add explanatory text to function calls
- NEVER respond with empty brackets
- Use proper Python/JSON syntax for function calls
- Check the function list carefully before responding

4. TOOL RESPONSE HANDLING:
- When receiving tool responses: provide concise, natural language responses
- Don't repeat tool response verbatim
- Don't add supplementary information

Here is a list of functions in JSON format that you can invoke:
"""


def render_llama4_chat(messages: list[dict], *, add_generation_prompt: bool = True,
                       continue_final_message: bool = False, date_string: None = None,
                       tools: list[Tool] | None = None) -> RenderedChat:
    """Render `messages` as Llama 4 prompt pieces plus the image sources in the order their markers appear.

    `continue_final_message` leaves the final assistant message open (no `<|eot|>`) so generation continues it;
    it excludes `add_generation_prompt`. The Llama 3.2 `date_string` option is accepted only as None: this format
    writes no date. `tools` are offered in the system block.
    """
    if date_string is not None:
        raise ChatFormatError(f"date_string={date_string!r} is a Llama 3.2 chat option; the llama4 chat format "
                              "writes no date")
    check_options(messages, add_generation_prompt, continue_final_message)
    system, turns = parse_messages(messages)
    system_text = system.text.strip() if system is not None else None
    if tools:
        definitions = json.dumps([tool.definition() for tool in tools], indent=4, ensure_ascii=False)
        system_text = ("" if system_text is None else system_text + "\n\n") + TOOLS_INSTRUCTION + definitions
    system_block = [] if system_text is None else [*_header(SYSTEM), literal(system_text), special(EOT)]
    return render_turns([special(LLAMA4_SPECIAL_TOKENS.bos), *system_block], turns, _header, EOT, TOOL_FORMAT,
                        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message)


def _header(role: str) -> list[PromptPiece]:
    return header(HEADER_START, role, HEADER_END)
