"""Tools a request declares and the calls a model makes to them, in OpenAI's terms.

Each model family writes calls in a format of its own (vlmserve/families): Llama 3.2 as a JSON object
`{"name": ..., "parameters": {...}}`, Llama 4 as a pythonic list `[f(a=1), g(b="x")]`. Tool names follow OpenAI's
rule (letters, digits, `_` and `-`, at most 64), so a name need not be a Python identifier.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Literal

ToolCallFormat = Literal["json", "pythonic"]


@dataclass(frozen=True)
class Tool:
    """A function the model may call. `parameters` is the JSON schema of its arguments object (None: it takes
    none); `strict` asks that every call's arguments match it (enforced by the output grammar)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool = False

    @classmethod
    def from_openai(cls, spec: Any) -> "Tool":
        """A tool as OpenAI's chat API spells it: {"type": "function", "function": {"name", "description",
        "parameters", "strict"}}; ValueError for anything else."""
        function = spec.get("function") if isinstance(spec, dict) and spec.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f'a tool must be {{"type": "function", "function": {{"name": ...}}}}, got {spec!r}')
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ValueError(f"tool {function['name']!r}: parameters must be a JSON schema object")
        return cls(function["name"], function.get("description"), parameters, bool(function.get("strict")))

    def definition(self) -> dict[str, Any]:
        """The function as OpenAI's API spells it ({"name", "description", "parameters"}), for the prompt."""
        spelled: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            spelled["description"] = self.description
        spelled["parameters"] = self.parameters if self.parameters is not None else {"type": "object",
                                                                                     "properties": {}}
        return spelled


@dataclass(frozen=True)
class ToolCall:
    """One call: the tool's name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def arguments_json(self) -> str:
        """The arguments as OpenAI's `function.arguments` carries them: JSON text."""
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ParsedOutput:
    """A completion's text split into what the client reads (`content`; None when nothing is left) and calls."""

    content: str | None
    calls: tuple[ToolCall, ...] = ()
