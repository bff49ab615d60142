"""Identical rules of an EBNF grammar merged into one, so a grammar built from many parts stays small.

xgrammar gives every JSON schema it converts its own copy of the basic JSON rules (`basic_string`, `basic_any`...);
a tool-call grammar holding one schema per argument repeats them per argument. Two rules are merged when they
are the same text up to the rules they name, and those rules are merged too (the coarsest such partition, found by
refining "same text with rule names masked" until it is stable). Merged rules match the same strings, recursive
ones included.
"""

import re

# One lexical unit of xgrammar's printed EBNF: a string literal, a character class, a name, or any other character.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z_][A-Za-z0-9_]*|\s+|.', re.DOTALL)
_DEFINES = " ::= "
ROOT = "root"


def merge_identical_rules(ebnf: str) -> str:
    """The grammar (as xgrammar prints it: one `name ::= body` per line) with each class of identical rules written
    once, under the name of its first rule (`root` for root's class)."""
    bodies = dict(_rule(line) for line in ebnf.splitlines() if line.strip())
    names = list(bodies)
    tokens = {name: _TOKEN.findall(body) for name, body in bodies.items()}
    masked = {name: tuple("" if token in bodies else token for token in tokens[name]) for name in names}
    named = {name: [token for token in tokens[name] if token in bodies] for name in names}
    classes = _numbered({name: masked[name] for name in names})
    while True:
        refined = _numbered({name: (classes[name], *(classes[ref] for ref in named[name])) for name in names})
        if len(set(refined.values())) == len(set(classes.values())):
            break
        classes = refined
    first = {}
    for name in sorted(names, key=lambda name: name != ROOT):
        first.setdefault(classes[name], name)
    kept = [name for name in names if first[classes[name]] == name]
    return "\n".join(name + _DEFINES + "".join(first[classes[t]] if t in bodies else t for t in tokens[name])
                     for name in kept) + "\n"


def _rule(line: str) -> tuple[str, str]:
    name, separator, body = line.partition(_DEFINES)
    if not separator:
        raise ValueError(f"not a grammar rule: {line[:80]!r}")
    return name.strip(), body


def _numbered(keys: dict[str, tuple]) -> dict[str, int]:
    """Each name's class: names with equal keys share a number."""
    numbers: dict[tuple, int] = {}
    return {name: numbers.setdefault(key, len(numbers)) for name, key in keys.items()}
