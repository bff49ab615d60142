"""OpenAI-style chat messages -> the Llama 4 Instruct prompt (model_spec G.6).

Layout: `<|begin_of_text|>`, a system block only when a system message is given
(`<|header_start|>system<|header_end|>\\n\\n{stripped system text}<|eot|>`, images allowed beside it), then per
message `<|header_start|>{role}<|header_end|>\\n\\n{content}<|eot|>`, then (if asked) the generation prompt
`<|header_start|>assistant<|header_end|>\\n\\n`. Content parts are concatenated with no separators and each image
part becomes `<|image|>` where it stands; the processor later expands each one into the image's tile tokens.
The chat is rendered as pieces (chat_messages): those special tokens are the only ones in the prompt, and message
text is encoded as literal text whatever it spells.

This matches transformers' Llama 4 chat template, except that a system message given as several text parts
keeps all of them (the template keeps only the first). Tool calls and tool results are not supported.
"""

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

EOT = LLAMA4_SPECIAL_TOKENS.eos  # <|eot|>
HEADER_START, HEADER_END = "<|header_start|>", "<|header_end|>"


def render_llama4_chat(messages: list[dict], *, add_generation_prompt: bool = True,
                       continue_final_message: bool = False, date_string: None = None) -> RenderedChat:
    """Render `messages` as Llama 4 prompt pieces plus the image sources in the order their markers appear.

    `continue_final_message` leaves the final assistant message open (no `<|eot|>`) so generation continues it;
    it excludes `add_generation_prompt`. The Llama 3.2 `date_string` option is accepted only as None: this format
    writes no date.
    """
    if date_string is not None:
        raise ChatFormatError(f"date_string={date_string!r} is a Llama 3.2 chat option; the llama4 chat format "
                              "writes no date")
    check_options(messages, add_generation_prompt, continue_final_message)
    system, turns = parse_messages(messages)
    system_block = [] if system is None else [*_header(SYSTEM), literal(system.text.strip()), special(EOT)]
    return render_turns([special(LLAMA4_SPECIAL_TOKENS.bos), *system_block], turns, _header, EOT,
                        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message)


def _header(role: str) -> list[PromptPiece]:
    return header(HEADER_START, role, HEADER_END)
