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
from vlmserve.tool_calls.pythonic_grammar import pythonic_calls_tag
from vlmserve.tool_calls.types import Tool, ToolCallFormat

_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
_ANY_OBJECT = {"type": "object"}
_TEXT_NOT_A_CALL = 'root ::= "" | [^{] [^]*'


def tool_call_constraint(tool_format: ToolCallFormat, tools: Sequence[Tool], *, only: str | None = None,
                         parallel: bool = True, allow_text: bool = False) -> StructuredOutputsParams:
    """The grammar of the calls the choice allows (`only`: the one tool's name; `allow_text`: or text instead).
    ValueError, naming the field in the client's terms, for what cannot be enforced."""
    if only is not None and only not in [tool.name for tool in tools]:
        raise ValueError(f"tool_choice names function {only!r}, which is not in tools")
    chosen = [(index, tool, tool.strict or not allow_text) for index, tool in enumerate(tools)
              if only is None or tool.name == only]
    for index, tool, enforce in chosen:
        if enforce:
            _check_parameters(index, tool)
    if tool_format == "pythonic":
        return StructuredOutputsParams(structural_tag=pythonic_calls_tag(chosen, parallel=parallel,
                                                                         allow_text=allow_text))
    schema = {"anyOf": [_call_schema(tool, enforce) for _, tool, enforce in chosen]}
    if not allow_text:
        return StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    call = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    return StructuredOutputsParams(grammar=str(xgr.Grammar.union(call, xgr.Grammar.from_ebnf(_TEXT_NOT_A_CALL))))


def _check_parameters(index: int, tool: Tool) -> None:
    """Refuses, naming tools[index].function.parameters, a schema over a limit or using references."""
    field = f"tools[{index}].function.parameters"
    if tool.parameters is None:
        return
    grammar_limits.check_schema(tool.parameters, field)
    if any(key in tool.parameters for key in ("$defs", "definitions", "$ref")):
        raise ValueError(f"{field}: $defs and $ref are not supported in tool schemas yet; write the schema inline")


def _call_schema(tool: Tool, enforce: bool) -> dict:
    parameters = tool.parameters if tool.parameters is not None else _NO_ARGUMENTS
    if not enforce:
        parameters = _ANY_OBJECT
    return {"type": "object", "properties": {"name": {"const": tool.name}, "parameters": parameters},
            "required": ["name", "parameters"], "additionalProperties": False}
