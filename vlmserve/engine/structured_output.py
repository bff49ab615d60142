"""Grammar-constrained decoding with xgrammar: one compiler per engine, one matcher per constrained sequence.

A request's JSON schema, regex, choice or grammar is compiled when the request is added (errors surface there as
ValueError, never in the engine loop; xgrammar caches compiled grammars, so a repeated schema costs nothing). Each
of its sequences gets its own matcher, which says which tokens may come next and accepts the sampled one; a
sequence preempted by recompute keeps its matcher, which has already accepted every output token so far.
"""

import json
import re

import torch
import xgrammar as xgr

from vlmserve.sampling_params import StructuredOutputsParams
from vlmserve.tokenizer.tokenizer import Tokenizer

_ANY_JSON_OBJECT = '{"type": "object"}'  # what vLLM compiles for json_object
# Whitespace characters allowed between two JSON tokens: enough for pretty-printing nested ten deep, and a bound on
# the known failure where a model pads with whitespace until max_tokens and the JSON never closes.
MAX_JSON_WHITESPACE = 20
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[18:23:00] /project/cpp/regex_converter.cc:83: "


class StructuredOutputManager:
    """Compiles requests' grammars over the engine's tokenizer and holds each constrained sequence's matcher.

    `vocab_size` is the LM head's: ids the tokenizer lacks (padding) and special tokens are never allowed, except
    a sequence's stop tokens, which are allowed exactly when its grammar may end.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compiler: xgr.GrammarCompiler | None = None  # built on the first structured request
        self._matchers: dict[int, xgr.GrammarMatcher] = {}  # seq_id -> matcher

    def compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        """The request's grammar; a schema, regex or grammar xgrammar rejects raises ValueError."""
        compiler = self._grammar_compiler()
        whitespace = {"any_whitespace": not params.disable_any_whitespace, "max_whitespace_cnt": MAX_JSON_WHITESPACE}
        try:
            if params.json is not None:
                return compiler.compile_json_schema(json.dumps(params.json), **whitespace)
            if params.json_object:
                return compiler.compile_json_schema(_ANY_JSON_OBJECT, **whitespace)
            if params.regex is not None:
                return compiler.compile_regex(params.regex)
            if params.choice is not None:
                return compiler.compile_grammar(_choice_grammar(params.choice))
            return compiler.compile_grammar(params.grammar)
        except RuntimeError as exc:  # xgrammar reports every compile error as a RuntimeError
            message = _LOG_PREFIX.sub("", str(exc).strip())
            raise ValueError(f"invalid structured_outputs.{params.kind}: {message}") from exc

    def add(self, seq_id: int, grammar: xgr.CompiledGrammar, stop_token_ids: tuple[int, ...]) -> None:
        """Start a matcher for one sequence. Without stop tokens (ignore_eos) it ends as soon as the grammar does."""
        stops = [t for t in stop_token_ids if t < self.vocab_size]
        self._matchers[seq_id] = xgr.GrammarMatcher(grammar, override_stop_tokens=stops or None,
                                                    terminate_without_stop_token=not stops)

    def accept(self, seq_id: int, token_id: int) -> None:
        """Advance the sequence's matcher, if it has one, past its sampled token (which its mask allowed)."""
        matcher = self._matchers.get(seq_id)
        if matcher is not None:
            matcher.accept_token(token_id)

    def is_terminated(self, seq_id: int) -> bool:
        """Whether the sequence's grammar has ended (its stop token accepted, or complete without stop tokens)."""
        matcher = self._matchers.get(seq_id)
        return matcher is not None and matcher.is_terminated()

    def release(self, seq_id: int) -> None:
        self._matchers.pop(seq_id, None)

    def __len__(self) -> int:
        """Live matchers: one per unfinished constrained sequence."""
        return len(self._matchers)

    def banned_mask(self, seq_ids: list[int], device: torch.device) -> torch.Tensor | None:
        """[B, V] bool on `device`: the tokens each constrained row's grammar forbids next, all False on other
        rows; None when no row is constrained."""
        rows = [(row, self._matchers[seq_id]) for row, seq_id in enumerate(seq_ids) if seq_id in self._matchers]
        if not rows:
            return None
        bitmask = xgr.allocate_token_bitmask(len(rows), self.vocab_size)  # [R, ceil(V / 32)] int32
        for index, (_, matcher) in enumerate(rows):
            matcher.fill_next_token_bitmask(bitmask, index)
        bits = torch.arange(32, dtype=torch.int32, device=device)
        # Bit j of word w allows token 32 * w + j.
        allowed = ((bitmask.to(device)[:, :, None] >> bits) & 1).bool().flatten(1)[:, : self.vocab_size]  # [R, V]
        banned = torch.zeros(len(seq_ids), self.vocab_size, dtype=torch.bool, device=device)
        banned[torch.tensor([row for row, _ in rows], device=device)] = ~allowed
        return banned

    def _grammar_compiler(self) -> xgr.GrammarCompiler:
        """The vocabulary as xgrammar reads it: byte-level BPE strings, "" for special tokens and padding ids."""
        if self._compiler is None:
            tokenizer = self.tokenizer
            vocab = ["" if tokenizer.is_special(i) else tokenizer.id_to_token(i) or "" for i in range(self.vocab_size)]
            info = xgr.TokenizerInfo(vocab, xgr.VocabType.BYTE_LEVEL, vocab_size=self.vocab_size,
                                     stop_token_ids=list(tokenizer.stop_token_ids))
            self._compiler = xgr.GrammarCompiler(info)
        return self._compiler


def _choice_grammar(choice: list[str]) -> str:
    """EBNF for "exactly one of these strings": JSON string literals are valid xgrammar EBNF literals."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choice)
