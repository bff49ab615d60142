"""The output grammar that enforces tool calls, for OpenAI's tool_choice "required", a named function, and tools
with `strict: true` under "auto".

Llama 3.2 (json) writes one call per message: `{"name": "<tool>", "parameters": {...}}`, compact (", " and ": "
separators, as its prompt's history writes calls), checked against the tool's schema. Under "auto" the answer may
instead be text that does not open with `{`; tools that are not strict then take any object as arguments.
Llama 4 (pythonic) writes a list of calls, `[f(a=1), g(b="x")]`, one call long without parallel tool calls
(pythonic_grammar); under "auto" the answer may instead be text that does not open with `[`.
"""

import json
from collections.abc import Sequence

import xgrammar as xgr

from vlmserve.engine import grammar_limits
from vlmserve.sampling_params import StructuredOutputsParams
from vlmserve.tool_calls.pythonic_grammar import json_value, pythonic_calls_tag
from vlmserve.tool_calls.schema_refs import LiftedSchema, lifted
from vlmserve.tool_calls.types import Tool, ToolCallFormat

_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
_ANY_OBJECT = {"type": "object"}
_TEXT_NOT_A_CALL = 'root ::= "" | [^{] [^]*'
TEXT_SCHEMA_FIELD = "response_format.json_schema.schema"


def tool_call_constraint(tool_format: ToolCallFormat, tools: Sequence[Tool], *, only: str | None = None,
                         parallel: bool = True, allow_text: bool = False, text_schema: dict | None = None
                         ) -> StructuredOutputsParams:
    """The grammar of the calls the choice allows (`only`: the one tool's name; `allow_text`: or text instead,
    JSON matching `text_schema` if given). ValueError, naming the field in the client's terms, for what cannot be
    enforced."""
    if only is not None and only not in [tool.name for tool in tools]:
        raise ValueError(f"tool_choice names function {only!r}, which is not in tools")
    prefixed = tool_format == "json"  # json: every tool's definitions under one root, so each under its index
    chosen = [(index, tool, _checked(index, tool, prefixed) if tool.strict or not allow_text else None)
              for index, tool in enumerate(tools) if only is None or tool.name == only]
    text = None
    if text_schema is not None:
        grammar_limits.check_schema(text_schema, TEXT_SCHEMA_FIELD)
        text = json_value(text_schema)
    if tool_format == "pythonic":
        return StructuredOutputsParams(structural_tag=pythonic_calls_tag(chosen, parallel=parallel,
                                                                         allow_text=allow_text, text=text))
    return _json_call_constraint(chosen, allow_text, text)


def _json_call_constraint(chosen: list[tuple[int, Tool, LiftedSchema | None]], allow_text: bool,
                          text: dict | None) -> StructuredOutputsParams:
    """One compact JSON call of the chosen tools; with `allow_text`, or the `text` format (default: text that does
    not open with `{`)."""
    schema = {"anyOf": [_call_schema(tool, schema) for _, tool, schema in chosen]}
    definitions = {name: value for _, _, schema in chosen if schema is not None
                   for name, value in schema.definitions.items()}
    if definitions:
        schema["$defs"] = definitions
    if not allow_text:
        return StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    if text is not None:
        return StructuredOutputsParams(structural_tag={"type": "structural_tag", "format": {
            "type": "or", "elements": [json_value(schema), text]}})
    call = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    return StructuredOutputsParams(grammar=str(xgr.Grammar.union(call, xgr.Grammar.from_ebnf(_TEXT_NOT_A_CALL))))


def _checked(index: int, tool: Tool, prefixed: bool) -> LiftedSchema:
    """The tool's schema with its definitions lifted out (`prefixed`: renamed `<index>_<name>`); ValueError, naming
    tools[index].function.parameters, for one over a limit or with references that are not to its own
    definitions."""
    field = f"tools[{index}].function.parameters"
    if tool.parameters is not None:
        grammar_limits.check_schema(tool.parameters, field)
    return lifted(tool.parameters, field, f"{index}_" if prefixed else "")


def _call_schema(tool: Tool, schema: LiftedSchema | None) -> dict:
    """The JSON call of `tool` whose arguments match `schema` (None: any object)."""
    parameters = _ANY_OBJECT if schema is None else _NO_ARGUMENTS if schema.body is None else schema.body
    return {"type": "object", "properties": {"name": {"const": tool.name}, "parameters": parameters},
            "required": ["name", "parameters"], "additionalProperties": False}
