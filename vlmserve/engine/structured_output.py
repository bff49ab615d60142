"""Grammar-constrained decoding with xgrammar: one compiler per engine, one matcher per constrained sequence.

A request's JSON schema, regex, choice, grammar or structural tag is compiled when the request is added, or
beforehand on a server's preparation threads (errors surface there as ValueError, never in the engine loop;
xgrammar caches compiled grammars, so a repeated one costs only its conversion). Compiling is bounded three ways: static limits
(grammar_limits), the size of the grammar xgrammar converts the input to, and a time budget. Each of its sequences
gets its own matcher, which says which tokens may come next and accepts the sampled one; a sequence preempted by
recompute keeps its matcher, which has already accepted every output token so far.
"""

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import torch
import xgrammar as xgr

from vlmserve.engine import grammar_limits
from vlmserve.engine.grammar_rules import merge_identical_rules
from vlmserve.sampling_params import StructuredOutputsParams
from vlmserve.tokenizer.tokenizer import Tokenizer

_ANY_JSON_OBJECT = '{"type": "object"}'  # what vLLM compiles for json_object
# Whitespace characters allowed between two JSON tokens: enough for pretty-printing nested ten deep, and a bound on
# the known failure where a model pads with whitespace until max_tokens and the JSON never closes.
MAX_JSON_WHITESPACE = 20
COMPILE_BUDGET_S = 0.5  # a compile past this is refused (inputs under grammar_limits' limits take < 0.2 s)
COMPILE_WORKERS = 4  # compiles running at once, abandoned ones included: xgrammar cannot be interrupted
GRAMMAR_CACHE_BYTES = 256 << 20  # xgrammar's cache of compiled grammars, unbounded by default
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[18:23:00] /project/cpp/regex_converter.cc:83: "


class StructuredOutputManager:
    """Compiles requests' grammars over the engine's tokenizer and holds each constrained sequence's matcher.

    `vocab_size` is the LM head's: ids the tokenizer lacks (padding) and special tokens are never allowed, except
    a sequence's stop tokens, which are allowed exactly when its grammar may end.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, compile_budget_s: float = COMPILE_BUDGET_S,
                 compile_workers: int = COMPILE_WORKERS):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.compile_budget_s = compile_budget_s
        self._compile_slots = threading.BoundedSemaphore(compile_workers)
        self._compiler: xgr.GrammarCompiler | None = None  # built on the first structured request
        self._compiler_lock = threading.Lock()
        self._matchers: dict[int, xgr.GrammarMatcher] = {}  # seq_id -> matcher

    def compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        """The request's grammar; one over a limit, too slow to compile or that xgrammar rejects raises ValueError.
        Safe to call from several threads at once (xgrammar's compiler is)."""
        field = f"structured_outputs.{params.kind}"
        try:
            convert = _converter(params)
            compiler = self._grammar_compiler()
            return self._within_budget(field, lambda: _compiled(compiler, field, convert()))
        except RuntimeError as exc:  # xgrammar reports every conversion or compile error as a RuntimeError
            message = _LOG_PREFIX.sub("", str(exc).strip())
            raise ValueError(f"{field} is invalid: {message}") from exc

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

    def _within_budget(self, field: str, build: Callable[[], xgr.CompiledGrammar]) -> xgr.CompiledGrammar:
        """`build()` on a compile thread, given up after the budget. xgrammar releases the GIL but cannot be
        stopped, so an abandoned compile keeps its slot until it ends (and its result is cached, so a retry then
        is immediate); daemon threads, so none holds up the process's exit."""
        deadline = time.monotonic() + self.compile_budget_s
        if not self._compile_slots.acquire(timeout=self.compile_budget_s):
            raise ValueError(f"{field} cannot be compiled now: every grammar compile worker stayed busy (with "
                             f"other grammars) for the {self.compile_budget_s:g} s budget; try again later")
        result: Future = Future()

        def run() -> None:
            try:
                result.set_result(build())
            except BaseException as exc:
                result.set_exception(exc)
            finally:
                self._compile_slots.release()
        threading.Thread(target=run, name="grammar-compile", daemon=True).start()
        try:
            return result.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:  # concurrent.futures' is the builtin since Python 3.11
            raise ValueError(f"{field} took longer than {self.compile_budget_s:g} s to compile; "
                             "simplify it") from None

    def _grammar_compiler(self) -> xgr.GrammarCompiler:
        """The vocabulary as xgrammar reads it: byte-level BPE strings, "" for special tokens and padding ids."""
        with self._compiler_lock:
            if self._compiler is None:
                tokenizer = self.tokenizer
                vocab = ["" if tokenizer.is_special(i) else tokenizer.id_to_token(i) or ""
                         for i in range(self.vocab_size)]
                info = xgr.TokenizerInfo(vocab, xgr.VocabType.BYTE_LEVEL, vocab_size=self.vocab_size,
                                         stop_token_ids=list(tokenizer.stop_token_ids))
                self._compiler = xgr.GrammarCompiler(info, cache_limit_bytes=GRAMMAR_CACHE_BYTES)
            return self._compiler


def _converter(params: StructuredOutputsParams) -> Callable[[], xgr.Grammar]:
    """Checks the static limits now; the conversion to an xgrammar Grammar, which may be slow, runs later."""
    if params.json is not None or params.json_object:
        text = _ANY_JSON_OBJECT if params.json_object else grammar_limits.check_schema(params.json)
        whitespace = {"any_whitespace": not params.disable_any_whitespace, "max_whitespace_cnt": MAX_JSON_WHITESPACE}
        return lambda: xgr.Grammar.from_json_schema(text, **whitespace)
    if params.structural_tag is not None:
        text = grammar_limits.check_schema(json.loads(params.structural_tag), "structured_outputs.structural_tag")
        return lambda: xgr.Grammar.from_ebnf(merge_identical_rules(str(xgr.Grammar.from_structural_tag(text))))
    if params.regex is not None:
        grammar_limits.check_regex("structured_outputs.regex", params.regex)
        return lambda: xgr.Grammar.from_regex(params.regex)
    if params.choice is not None:
        grammar_limits.check_choice(params.choice)
        ebnf = _choice_grammar(params.choice)
    else:
        grammar_limits.check_ebnf(params.grammar)
        ebnf = params.grammar
    return lambda: xgr.Grammar.from_ebnf(ebnf)


def _compiled(compiler: xgr.GrammarCompiler, field: str, grammar: xgr.Grammar) -> xgr.CompiledGrammar:
    """Refuses a grammar too big to compile quickly; compiles it into what compile_json_schema, compile_regex or
    compile_grammar would have given for the same input."""
    grammar_limits.check_converted(field, str(grammar))
    return compiler.compile_grammar(grammar)


def _choice_grammar(choice: list[str]) -> str:
    """EBNF for "exactly one of these strings": JSON string literals are valid xgrammar EBNF literals."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choice)
