"""Streaming token ids -> text, one step at a time, without ever splitting a UTF-8 character.

Byte-level BPE tokens can end in the middle of a multi-byte character, which decodes to U+FFFD until the
rest arrives. As in vLLM, each step decodes only a short window: the tokens from `prefix offset` (already
emitted, kept as context) to the end, and emits what lies past the text of the tokens before `read offset`.
The window is cut back each time text is emitted, so a step decodes a bounded number of tokens.
"""

from vlmserve.tokenizer.tokenizer import Tokenizer

PROMPT_CONTEXT_TOKENS = 5  # prompt tokens decoded as context for the first output tokens (vLLM's choice)
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns one sequence's output token ids into text deltas as they are generated."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int] | None = None, *,
                 skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._window = list(prompt_token_ids or [])[-PROMPT_CONTEXT_TOKENS:]  # ids from the prefix offset on
        self._read_offset = len(self._window)  # index in _window: text of the ids before it is already out

    def step(self, new_token_ids: list[int]) -> str:
        """Add generated ids; return the text they complete (empty while a character is still partial)."""
        self._window.extend(new_token_ids)
        pending = self._pending_text()
        if not pending or pending.endswith(REPLACEMENT_CHAR):
            return ""
        return self._emit(pending)

    def flush(self) -> str:
        """Return whatever text is held back, even an incomplete character (as U+FFFD); call when done."""
        pending = self._pending_text()
        return self._emit(pending) if pending else ""

    def _pending_text(self) -> str:
        prefix_text = self._decode(self._window[:self._read_offset])
        full_text = self._decode(self._window)
        return full_text[len(prefix_text):]

    def _emit(self, delta: str) -> str:
        self._window = self._window[self._read_offset:]
        self._read_offset = len(self._window)
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)
