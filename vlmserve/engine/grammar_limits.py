"""Limits on a request's structured_outputs, checked before xgrammar sees it: xgrammar's cost grows faster than the
input in several shapes, so a small request could otherwise take minutes of CPU.

Measured with xgrammar 0.2.9 and the Llama 3 vocabulary (128K tokens) on 2 cores, converting and compiling:
inline schema nesting costs ~depth^3 (32: 0.02 s, 128: 0.6 s, 450: 30 s); optional properties of one object
~count^3 (128: 0.1 s, 1000: 2.4 s, 2000: 25 s); an enum or choice faster than count^2 past a few thousand
(5000: 0.2 s, 20000: 25 s); literal text ~12 us a character and superlinear (16K characters: 0.2 s); a `pattern`'s {m,n}
repetition is expanded (a{3000}: 0.5 s, a{10000}: 8 s); everything else grows roughly with the converted grammar.
Each limit is far above what clients send (OpenAI's structured outputs take 10 levels of nesting and 1000 enum
values), and an input just under any one of them compiles in under 0.2 s; the compile budget in
structured_output catches what these miss, such as long repetitions of broad character classes (`.{64}` in a
regex takes 1 s).

Every refusal is a ValueError starting with the field's name, which the server turns into a 400 naming it.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_SCHEMA_BYTES = 128 * 1024  # the schema as JSON text; descriptions count here but cost nothing to compile
MAX_SCHEMA_DEPTH = 32  # subschemas nested inline (properties, items, anyOf, $defs...); $ref chains are cheap
MAX_OPTIONAL_PROPERTIES = 128  # per object: properties not in its "required"
MAX_CHOICES = 1000  # values of one JSON enum, or a choice's strings
MAX_LITERAL_CHARS = 12_000  # all of a schema's enum and const values as JSON, or all of a choice's strings
MAX_REGEX_CHARS = 8192  # a regex, or one pattern in a schema
MAX_REPEAT = 1000  # {m,n} bounds in a regex (nested ones multiplied), or summed over a schema's patterns
MAX_EBNF_CHARS = 16384
MAX_GRAMMAR_CHARS = 65536  # the grammar xgrammar converts any of them to, printed, before compiling it

# Keywords whose values are JSON data rather than subschemas, and those whose values map names to subschemas.
DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_JSON = "structured_outputs.json"
_HUGE = 10**9  # any count past this is just "too large" (and keeps messages short)


def check_schema(schema: dict, field: str = _JSON) -> str:
    """The schema as the JSON text xgrammar converts; raises ValueError if it is over a limit. A structural tag is
    checked the same way (`field` names it): the schemas it holds are its subschemas."""
    totals = _SchemaTotals(field)
    for subschema, depth in _subschemas(schema):
        totals.add(subschema, depth)
    _check(field, "schema nesting depth", totals.depth, MAX_SCHEMA_DEPTH)
    text = json.dumps(schema)
    _check(field, "schema size in bytes", len(text), MAX_SCHEMA_BYTES)
    _check(field, "total length of enum and const values", totals.literal_chars, MAX_LITERAL_CHARS)
    _check(field, "repetition count of all patterns together", totals.repeats, MAX_REPEAT)
    return text


def check_regex(field: str, regex: str) -> int:
    """The regex's repetition count (its largest product of nested {m,n} bounds); raises if over a limit."""
    _check(field, "length", len(regex), MAX_REGEX_CHARS)
    repeats = _repetition(regex)
    _check(field, "repetition count ({m,n} bounds, nested ones multiplied)", repeats, MAX_REPEAT)
    return repeats


def check_choice(choice: list[str]) -> None:
    field = "structured_outputs.choice"
    _check(field, "count", len(choice), MAX_CHOICES)
    _check(field, "total length", sum(map(len, choice)), MAX_LITERAL_CHARS)


def check_ebnf(grammar: str) -> None:
    _check("structured_outputs.grammar", "length", len(grammar), MAX_EBNF_CHARS)


def check_converted(field: str, grammar_text: str) -> None:
    _check(field, "converted grammar length", len(grammar_text), MAX_GRAMMAR_CHARS)


def _check(field: str, what: str, value: int, limit: int) -> None:
    if value > limit:
        raise ValueError(f"{field} {what} is {value}, more than the {limit} allowed")


@dataclass
class _SchemaTotals:
    field: str
    depth: int = 0
    literal_chars: int = 0
    repeats: int = 0

    def add(self, schema: dict, depth: int) -> None:
        """Count one subschema; its per-object limits are checked at once."""
        self.depth = max(self.depth, depth)
        properties, required = schema.get("properties"), schema.get("required")
        if isinstance(properties, dict):
            required = required if isinstance(required, list) else []
            optional = set(properties) - {name for name in required if isinstance(name, str)}
            _check(self.field, "number of optional properties of one object", len(optional), MAX_OPTIONAL_PROPERTIES)
        enum = schema.get("enum")
        if isinstance(enum, list):
            _check(self.field, "number of enum values", len(enum), MAX_CHOICES)
            self.literal_chars += sum(len(json.dumps(value)) for value in enum)
        if "const" in schema:
            self.literal_chars += len(json.dumps(schema["const"]))
        patterns = [schema["pattern"]] if isinstance(schema.get("pattern"), str) else []
        if isinstance(schema.get("patternProperties"), dict):
            patterns += schema["patternProperties"]
        self.repeats += sum(check_regex(f"{self.field} pattern", pattern) for pattern in patterns)


def _subschemas(schema: dict) -> Iterator[tuple[dict, int]]:
    """Every subschema with its nesting depth (the root is 1); iterative, so any depth can be measured."""
    stack = [(schema, 1)]
    while stack:
        schema, depth = stack.pop()
        yield schema, depth
        for key, value in schema.items():
            if key in DATA_KEYWORDS:
                continue
            children = value.values() if key in SCHEMA_MAPS and isinstance(value, dict) else (
                [value] if isinstance(value, dict) else value if isinstance(value, list) else ())
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict))


def _repetition(regex: str) -> int:
    """The largest product of nested {m,n} bounds in `regex`, 1 without any; *, + and ? are not expanded."""
    inside = [1]  # per open group: the largest product within it so far
    last, i = 1, 0  # the product of the atom (or group) just before position i
    while i < len(regex):
        quantifier = _QUANTIFIER.match(regex, i)
        if quantifier:
            last = min(last * max(_bound(quantifier[1]), _bound(quantifier[2] or "0")), _HUGE)
            inside[-1] = max(inside[-1], last)
            i = quantifier.end()
            continue
        char, last = regex[i], 1
        if char == "(":
            inside.append(1)
        elif char == ")" and len(inside) > 1:
            last = inside.pop()
            inside[-1] = max(inside[-1], last)
        elif char == "[":
            i = _class_end(regex, i) - 1
        elif char == "\\":
            i += 1
        i += 1
    return max(inside)


def _bound(digits: str) -> int:
    """A {m,n} bound (int() refuses thousands of digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 9 else _HUGE


def _class_end(regex: str, start: int) -> int:
    """The index just past the character class opening at `start` (a "]" first in it is a literal)."""
    i = start + 1 + regex.startswith("^", start + 1)
    i += regex.startswith("]", i)
    while i < len(regex) and regex[i] != "]":
        i += 2 if regex[i] == "\\" else 1
    return i + 1
