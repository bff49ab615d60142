"""Tool calls in a model's text: found wherever they stand, in either family's syntax, never at the cost of text.

Models mix the syntaxes up (a Llama 4 asked for pythonic calls may answer in JSON), so both are read for both
families:
- JSON: `{"name": "f", "parameters": {...}}` ("arguments" too, an optional "type": "function", arguments as an
  object or as JSON text holding one), several in a row (separated by `;`, `,` or whitespace), or a JSON array.
- Pythonic: `[f(a=1), g(b="x")]`, keyword arguments whose values are Python literals, or JSON's true/false/null.
A call counts only when its name is a declared tool's and its arguments are a JSON object; anything else (a
truncated call, `{"name": "Bob"}` for no tool named Bob, a Markdown link) stays content. The wrappers Llama
writes around calls (`<|python_tag|>`, `<|python_start|>`...) show only with skip_special_tokens=false, and go
with the call they wrap.

Calls are looked for only where one opens (`CallOpenings`: `[` name `(`, `[{"name"`, `{"name"`, `{"type"`), and
a candidate's end is found by a scan that skips strings, so long outputs are read in about linear time.
"""

import ast
import json
import math
import re
import warnings
from collections.abc import Collection, Sequence
from enum import IntEnum
from typing import Any

from vlmserve.tool_calls.types import ParsedOutput, ToolCall

WRAPPERS_BEFORE = ("<|python_tag|>", "<|python_start|>")
WRAPPERS_AFTER = ("<|python_end|>", "<|eom_id|>", "<|eom|>", "<|eot_id|>", "<|eot|>")
WRAPPER_TOKENS = WRAPPERS_BEFORE + WRAPPERS_AFTER
JSON_CALL_KEYS = ('"name"', '"type"')  # the key a JSON call opens with (the grammar and the model write name first)

_SPACE = re.compile(r"\s*")
_JSON_SEPARATORS = re.compile(r"[\s;,]*")
_CANDIDATE = re.compile(r"[\[{]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate cannot be sent as UTF-8
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the line breaks Python's tokenizer counts (ast's lineno)
_CLOSING = {"[": "]", "{": "}", "(": ")"}
_JSON_NAMES = {"true": True, "false": False, "null": None}
_PARSE_ERRORS = (ValueError, SyntaxError, RecursionError, MemoryError)  # ValueError includes _NotACall


class Opening(IntEnum):
    """Whether a call (or a wrapper token) opens at a place in the text so far (the higher, the surer)."""

    NO = 0  # it cannot, whatever text follows
    MAYBE = 1  # the text ends before that is decided
    YES = 2


class _NotACall(ValueError):
    pass


def parse_tool_calls(text: str, tool_names: Collection[str]) -> ParsedOutput:
    """`text` split into content (the text outside the calls and their wrapper tokens, stripped; None if empty)
    and the calls of declared tools, in order. Never raises."""
    openings = CallOpenings(tool_names)
    reader = _CallReader(text, openings)
    calls, kept, position, start = [], [], 0, 0
    while openings.names and (candidate := _CANDIDATE.search(text, start)) is not None:
        start = candidate.start()
        found = reader.calls_at(start)
        if found is None:
            start += 1
            continue
        span_calls, end = found
        span_start, span_end = _with_wrappers(text, start, end, floor=position)
        calls.extend(span_calls)
        kept.append(text[position:span_start])
        position = start = span_end
    kept.append(text[position:])
    return ParsedOutput("".join(kept).strip() or None, tuple(calls))


class CallOpenings:
    """Where, in a text, a call of the declared tools opens, or a wrapper token: `[` name `(`, `[{"name"`,
    `{"name"`, `{"type"` (whitespace allowed between the parts), `<|python_tag|>`..."""

    def __init__(self, tool_names: Collection[str]):
        self.names = tuple(name for name in dict.fromkeys(tool_names) if name)  # "" would make `[(` a call
        self._by_opener = {
            "[": (_steps(["["], self.names, ["("]), _steps(["["], ["{"], JSON_CALL_KEYS)),
            "{": (_steps(["{"], JSON_CALL_KEYS),),
            "<": (_steps(WRAPPER_TOKENS),),
        }

    def at(self, text: str, index: int) -> Opening:
        """Whether what starts at `text[index]` is, or may still become once more text follows, an opening."""
        return max((_steps_opening(text, index, steps) for steps in self._by_opener.get(text[index], ())),
                   default=Opening.NO)


_Steps = tuple[dict[str, tuple[str, ...]], ...]  # per step, its words by their first character


def _steps(*steps: Sequence[str]) -> _Steps:
    by_first: list[dict[str, tuple[str, ...]]] = []
    for words in steps:
        step: dict[str, tuple[str, ...]] = {}
        for word in words:
            step[word[0]] = step.get(word[0], ()) + (word,)
        by_first.append(step)
    return tuple(by_first)


def _steps_opening(text: str, position: int, steps: _Steps) -> Opening:
    """Whether `text` from `position` reads a word of each step in turn (whitespace allowed between steps)."""
    if not steps:
        return Opening.YES
    position = _SPACE.match(text, position).end()
    left = len(text) - position
    if left == 0:
        return Opening.MAYBE
    best = Opening.NO
    for word in steps[0].get(text[position], ()):
        if text.startswith(word, position):
            best = max(best, _steps_opening(text, position + len(word), steps[1:]))
        elif left < len(word) and word.startswith(text[position:]):
            best = max(best, Opening.MAYBE)
        if best is Opening.YES:
            break
    return best


class _CallReader:
    """The calls of one text, read at the candidates parse_tool_calls finds. Where each bracket outside strings
    closes (or that it does not) is remembered, so the many candidates of a long truncated output cost about one
    scan, not one each."""

    def __init__(self, text: str, openings: CallOpenings):
        self.text = text
        self.openings = openings
        self._closings: dict[int, int | None] = {}  # bracket index -> index of its closing one (None: none)

    def calls_at(self, start: int) -> tuple[list[ToolCall], int] | None:
        """The calls that open at `start` and the index just past them, or None."""
        text = self.text
        if self.openings.at(text, start) is not Opening.YES:
            return None
        try:
            if text[start] == "{":
                return self._json_objects(start)
            if text[_SPACE.match(text, start + 1).end()] == "{":
                return self._json_array(start)
            return self._pythonic_list(start)
        except _PARSE_ERRORS:
            return None

    def _json_objects(self, start: int) -> tuple[list[ToolCall], int]:
        """`{call}`, then more calls after `;`, `,` or whitespace, as long as they follow."""
        text, names = self.text, self.openings.names
        value, end = _DECODER.raw_decode(text, start)
        calls = [_json_call(value, names)]
        while True:
            following = _JSON_SEPARATORS.match(text, end).end()
            if following == len(text) or text[following] != "{":
                return calls, end
            try:
                value, value_end = _DECODER.raw_decode(text, following)
                calls.append(_json_call(value, names))
            except _PARSE_ERRORS:
                return calls, end
            end = value_end

    def _json_array(self, start: int) -> tuple[list[ToolCall], int]:
        value, end = _DECODER.raw_decode(self.text, start)
        if not isinstance(value, list):
            raise _NotACall("not a list of calls")
        return [_json_call(item, self.openings.names) for item in value], end

    def _pythonic_list(self, start: int) -> tuple[list[ToolCall], int]:
        """`[f(a=1), g(b="x")]` from `start` (its `[`)."""
        text, calls, position = self.text, [], start + 1
        while True:
            name, open_paren = self._call_head(position)
            close_paren = self._closing_bracket(open_paren)
            calls.append(ToolCall(name, _keyword_arguments(text[open_paren:close_paren + 1])))
            position = _SPACE.match(text, close_paren + 1).end()
            if text.startswith("]", position):
                return calls, position + 1
            if not text.startswith(",", position):
                raise _NotACall("calls are separated by commas")
            position += 1

    def _call_head(self, position: int) -> tuple[str, int]:
        """The declared name at `position` (past whitespace) and the index of the `(` after it."""
        text = self.text
        position = _SPACE.match(text, position).end()
        for name in self.openings.names:
            if text.startswith(name, position):
                paren = _SPACE.match(text, position + len(name)).end()
                if text.startswith("(", paren):
                    return name, paren
        raise _NotACall("not a call of a declared tool")

    def _closing_bracket(self, start: int) -> int:
        """The index of the bracket that closes the one at `start`, strings skipped; _NotACall if none does."""
        if start not in self._closings:
            self._scan_brackets(start)
        closing = self._closings[start]
        if closing is None:
            raise _NotACall("the bracket is not closed")
        return closing

    def _scan_brackets(self, start: int) -> None:
        """Scans from the bracket at `start` to its closing one, noting where each bracket on the way closes.
        The scan from any bracket outside strings goes the same way from there, so a bracket still open where
        this one stops (at the end, an unclosed string, or a bracket that does not match) closes nowhere."""
        text, open_brackets, position = self.text, [start], start + 1
        try:
            while open_brackets and position < len(text):
                char = text[position]
                if char in "\"'":
                    position = _string_end(text, position)
                elif char in _CLOSING:
                    if position not in self._closings:
                        open_brackets.append(position)
                    elif (closing := self._closings[position]) is None:
                        break
                    else:
                        position = closing
                elif char in ")]}":
                    if char != _CLOSING[text[open_brackets[-1]]]:
                        break
                    self._closings[open_brackets.pop()] = position
                position += 1
        except _NotACall:  # a string that is not closed
            pass
        for bracket in open_brackets:
            self._closings[bracket] = None


def _with_wrappers(text: str, start: int, end: int, floor: int) -> tuple[int, int]:
    """The span of the calls at [start, end) widened over the wrapper tokens right before and after them (not
    before `floor`)."""
    while True:
        before = start
        while before > floor and text[before - 1].isspace():
            before -= 1
        token = next((token for token in WRAPPERS_BEFORE if text.endswith(token, floor, before)), None)
        if token is None:
            break
        start = before - len(token)
    while True:
        after = _SPACE.match(text, end).end()
        token = next((token for token in WRAPPERS_AFTER if text.startswith(token, after)), None)
        if token is None:
            return start, end
        end = after + len(token)


def _json_call(value: Any, names: tuple[str, ...]) -> ToolCall:
    if not isinstance(value, dict) or value.get("name") not in names:
        raise _NotACall("not a call of a declared tool")
    if set(value) - {"name", "parameters", "arguments", "type"} or value.get("type", "function") != "function":
        raise _NotACall("a call has only a name, parameters (or arguments) and a type")
    arguments = value.get("parameters", value.get("arguments", {}))
    if isinstance(arguments, str):
        arguments = _DECODER.decode(arguments)
    return ToolCall(value["name"], _json_object(arguments))


def _reject_constant(name: str):
    raise _NotACall(f"{name} is not JSON")


def _finite_float(spelled: str) -> float:
    value = float(spelled)
    if not math.isfinite(value):  # 1e999
        raise _NotACall(f"{spelled} is not a finite number")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _string_end(text: str, start: int) -> int:
    """The index of the quote that ends the string opened at `start` (backslash escapes skipped)."""
    quote, position = text[start], start + 1
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
        elif char == quote:
            return position
        else:
            position += 1
    raise _NotACall("a string is not closed")


def _keyword_arguments(arguments: str) -> dict[str, Any]:
    """`(a=1, b="x")` -> {"a": 1, "b": "x"}: keyword arguments only, each value a literal."""
    source = "_" + arguments  # the name is not always an identifier (`search-web`): ast reads a stand-in
    with warnings.catch_warnings(action="ignore"):  # "invalid escape sequence" for `"\d"`, a str all the same
        call = ast.parse(source, mode="eval").body
    if not isinstance(call, ast.Call) or call.args or any(keyword.arg is None for keyword in call.keywords):
        raise _NotACall("only keyword arguments")
    lines = [line.encode() for line in _LINE_BREAK.split(source)]
    return _json_object({keyword.arg: _literal(keyword.value, lines) for keyword in call.keywords})


def _literal(node: ast.AST, lines: list[bytes]) -> Any:
    """The JSON value a literal spells (`lines`: the source, for how its strings are spelled)."""
    if isinstance(node, ast.Constant):
        return _constant(node, lines)
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item, lines) for item in node.elts]
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise _NotACall("** in a dict")
        keys = [_literal(key, lines) for key in node.keys]
        if not all(isinstance(key, str) for key in keys):
            raise _NotACall("object keys are strings")
        return {key: _literal(value, lines) for key, value in zip(keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, lines)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _NotACall("a sign goes before a number")
        return -value if isinstance(node.op, ast.USub) else value
    raise _NotACall("not a literal")


def _constant(node: ast.Constant, lines: list[bytes]) -> Any:
    value = node.value
    if isinstance(value, str):
        return _json_spelled_string(node, lines) or value
    if value is None or isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise _NotACall("not a JSON value")


def _json_spelled_string(node: ast.Constant, lines: list[bytes]) -> str | None:
    """The string as JSON reads it, if it is written as one JSON string (so `"\\ud83d\\ude00"` is one emoji,
    where Python reads two lone surrogates); None if not."""
    if node.lineno != node.end_lineno:
        return None
    spelled = lines[node.lineno - 1][node.col_offset:node.end_col_offset].decode()  # offsets count UTF-8 bytes
    if not spelled.startswith('"') or spelled.startswith('"""'):
        return None
    try:
        return json.loads(spelled)
    except ValueError:
        return None


def _json_object(arguments: Any) -> dict[str, Any]:
    """`arguments` if it is an object that can be sent as JSON in UTF-8, else _NotACall."""
    if not isinstance(arguments, dict):
        raise _NotACall("arguments must be an object")
    _check_sendable(arguments)
    return arguments


def _check_sendable(value: Any) -> None:
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise _NotACall("a lone surrogate")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _NotACall("not a finite number")
    elif isinstance(value, list):
        for item in value:
            _check_sendable(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_sendable(key)
            _check_sendable(item)
