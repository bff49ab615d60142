"""The grammar of Llama 4's pythonic calls, `[f(a=1, b="x"), g()]`, as an xgrammar structural tag.

A call's keyword arguments follow its schema's property order: required ones are always written, optional ones
may be left out, and each value is JSON matching its property's schema (JSON's true/false/null, which the parser
reads as Python's True/False/None; JSON strings are Python strings too). A tool whose schema is not enforced takes
any keyword arguments with JSON values.
"""

import keyword
from collections.abc import Sequence

from vlmserve.tool_calls.schema_refs import LiftedSchema
from vlmserve.tool_calls.types import Tool

MAX_VALUE_WHITESPACE = 20  # in a JSON value, as structured outputs allow (structured_output.MAX_JSON_WHITESPACE)
_TEXT_NOT_A_CALL = 'root ::= "" | [^[] [^]*'
_ANY_KEYWORD = "[A-Za-z_][A-Za-z0-9_]*="
# Top-level schema keywords the call's argument list can express; annotations change nothing.
_EXPRESSIBLE = frozenset({"type", "properties", "required", "additionalProperties", "description", "title",
                          "$schema", "$comment", "strict"})


def pythonic_calls_tag(chosen: Sequence[tuple[int, Tool, LiftedSchema | None]], *, parallel: bool,
                       allow_text: bool, text: dict | None = None) -> dict:
    """The structural tag for a list of calls of the `chosen` tools (each with its index in `tools` and its schema,
    None where it is not enforced): one call, or any number with `parallel`; with `allow_text`, the `text` format
    instead (default: text not opening with `[`). ValueError, naming tools[i].function.parameters, for a schema
    the argument list cannot express."""
    call = _one_of([_call(index, tool, schema) for index, tool, schema in chosen])
    more = [_star(_sequence(_text(", "), call))] if parallel else []
    calls = _sequence(_text("["), call, *more, _text("]"))
    if allow_text:
        calls = _one_of([calls, text or {"type": "grammar", "grammar": _TEXT_NOT_A_CALL}])
    return {"type": "structural_tag", "format": calls}


def _call(index: int, tool: Tool, schema: LiftedSchema | None) -> dict:
    if schema is None:
        argument = _sequence({"type": "regex", "pattern": _ANY_KEYWORD}, json_value(True))
        arguments = [_optional(_sequence(argument, _star(_sequence(_text(", "), argument))))]
    else:
        definitions = {"$defs": schema.definitions} if schema.definitions else {}
        arguments = _arguments([(name, {**value, **definitions} if definitions and isinstance(value, dict) else value,
                                 required) for name, value, required in _properties(index, schema.body)])
    return _sequence(_text(f"{tool.name}("), *arguments, _text(")"))


def _properties(index: int, schema: dict | None) -> list[tuple[str, dict | bool, bool]]:
    """(name, schema, required) per property of the arguments object, in the schema's order."""
    if schema is None:
        return []
    field = f"tools[{index}].function.parameters"
    unexpressed = sorted(set(schema) - _EXPRESSIBLE)
    if unexpressed or schema.get("type", "object") != "object":
        what = f"{unexpressed[0]!r}" if unexpressed else f"type {schema['type']!r}"
        raise ValueError(f"{field}: {what} at the top of a schema cannot be enforced in Llama 4's pythonic calls; "
                         'use a plain {"type": "object", "properties": ...} schema')
    properties, required = schema.get("properties", {}), schema.get("required", [])
    missing = [name for name in required if name not in properties]
    if missing:
        raise ValueError(f"{field}: required names {missing[0]!r}, which is not in properties")
    for name in properties:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"{field}: property {name!r} cannot be a keyword argument of a Llama 4 pythonic call "
                             "(it must be a Python identifier and not a keyword)")
    return [(name, value, name in required) for name, value in properties.items()]


def _arguments(properties: list[tuple[str, dict | bool, bool]]) -> list[dict]:
    """Any choice of the optional arguments with every required one, in order, separated by ", ": the first
    argument written is one of those up to the first required one; after it, each later one is written (with its
    separator) or, if optional, may be left out. Empty for a tool without properties."""
    firsts = []
    for position, (name, schema, required) in enumerate(properties):
        later = [_later(*property_) for property_ in properties[position + 1:]]
        firsts.append(_sequence(_keyword(name, schema), *later))
        if required:
            return [_one_of(firsts)]
    return [_optional(_one_of(firsts))] if firsts else []


def _later(name: str, schema: dict | bool, required: bool) -> dict:
    written = _sequence(_text(", "), _keyword(name, schema))
    return written if required else _optional(written)


def _keyword(name: str, schema: dict | bool) -> dict:
    return _sequence(_text(f"{name}="), json_value(schema))


def json_value(schema: dict | bool) -> dict:
    """The structural-tag format of JSON matching `schema`."""
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_VALUE_WHITESPACE}


def _text(value: str) -> dict:
    return {"type": "const_string", "value": value}


def _sequence(*elements: dict) -> dict:
    return elements[0] if len(elements) == 1 else {"type": "sequence", "elements": list(elements)}


def _one_of(elements: list[dict]) -> dict:
    return elements[0] if len(elements) == 1 else {"type": "or", "elements": elements}


def _optional(content: dict) -> dict:
    return {"type": "optional", "content": content}


def _star(content: dict) -> dict:
    return {"type": "star", "content": content}
