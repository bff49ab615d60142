"""Calls written the way each family's model writes them, for assistant messages in a prompt's history."""

import json
from typing import Any

from vlmserve.tool_calls.types import ToolCall, ToolCallFormat

JSON_CALL_SEPARATOR = "; "  # between the calls of one Llama 3.2 message (its model writes one call per message)


def render_calls(calls: list[ToolCall], tool_format: ToolCallFormat) -> str:
    """`{"name": "f", "parameters": {...}}` per call (json), or `[f(a=1), g(b="x")]` (pythonic)."""
    if tool_format == "json":
        return JSON_CALL_SEPARATOR.join(
            json.dumps({"name": call.name, "parameters": call.arguments}, ensure_ascii=False) for call in calls)
    return "[" + ", ".join(_pythonic_call(call) for call in calls) + "]"


def _pythonic_call(call: ToolCall) -> str:
    return f"{call.name}(" + ", ".join(f"{name}={python_literal(value)}"
                                       for name, value in call.arguments.items()) + ")"


def python_literal(value: Any) -> str:
    """A JSON value as a Python literal: True/False/None, strings as JSON spells them (also valid Python)."""
    if value is True or value is False or value is None:
        return repr(value)
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(key), ensure_ascii=False)}: {python_literal(item)}"
                               for key, item in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON value")
