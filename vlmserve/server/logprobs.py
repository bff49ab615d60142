"""The engine's per-token logprob dicts -> OpenAI's chat and completions logprob shapes.

A token's text is its own bytes decoded as UTF-8; a token that ends inside a multi-byte character shows
U+FFFD there, and `bytes` lets a client join such tokens exactly (as OpenAI documents).
"""

import functools
import itertools

from vlmserve.server.protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob
from vlmserve.tokenizer.tokenizer import Tokenizer


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE writes each byte as a printable character (GPT-2's table); this maps them back."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: b for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = 256 + n
    return {chr(c): b for b, c in chars.items()}


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    token = tokenizer.id_to_token(token_id) or ""
    decoder = _byte_decoder()
    if tokenizer.is_special(token_id) or not all(ch in decoder for ch in token):
        return token.encode()
    return bytes(decoder[ch] for ch in token)


def _entry(tokenizer: Tokenizer, token_id: int, logprob: float) -> TopLogprob:
    raw = token_bytes(tokenizer, token_id)
    return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(raw))


def _top(logprobs: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The k best: the engine's dicts hold the top tokens first, best first (then the sampled one, if not among
    them), so they are not sorted again."""
    return list(itertools.islice(logprobs.items(), k))


def chat_logprobs(tokenizer: Tokenizer, token_ids: list[int], logprobs: list[dict[int, float]],
                  k: int) -> ChoiceLogprobs:
    content = []
    for token_id, step in zip(token_ids, logprobs):
        sampled = _entry(tokenizer, token_id, step[token_id])
        top = [_entry(tokenizer, i, lp) for i, lp in _top(step, k)]
        content.append(TokenLogprob(**sampled.model_dump(), top_logprobs=top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokenizer: Tokenizer, token_ids: list[int], logprobs: list[dict[int, float]], k: int,
                        text_offset: int) -> CompletionLogprobs:
    """`text_offset` is where the first token's text starts in the completion (continued across chunks)."""
    tokens, offsets = [], []
    for token_id in token_ids:
        tokens.append(_entry(tokenizer, token_id, 0.0).token)
        offsets.append(text_offset)
        text_offset += len(tokens[-1])
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=[step[t] for t, step in zip(token_ids, logprobs)],
        top_logprobs=[{_entry(tokenizer, i, 0.0).token: lp for i, lp in _top(step, k)} for step in logprobs],
        text_offset=offsets)
