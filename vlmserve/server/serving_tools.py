"""Tool calling on /v1/chat/completions: OpenAI's tools and tool_choice -> the prompt's tools and an output
grammar, and a completion's text -> content plus tool_calls, whole or as stream deltas.

- `none` (the default without tools): the tools are left out of the prompt and nothing is parsed, as vLLM does with
  --exclude-tools-when-tool-choice-none.
- `auto` (the default with tools): the model chooses; its text is parsed for calls in either family's syntax.
  Tools with `strict: true` are enforced by a grammar that lets the answer be text or a call that matches.
- `required` and a named function: a grammar makes the answer one or more calls (one for Llama 3.2, whose model
  writes one call per message) matching the tools' schemas, even from random weights.
- `response_format` (json_schema, json_object) applies to text answers, as OpenAI's does: under "auto" the grammar
  lets the answer be a call or JSON in that format; under "required" there is no text for it to shape.
"""

import uuid
from dataclasses import dataclass

from vlmserve.sampling_params import StructuredOutputsParams
from vlmserve.server.errors import APIError
from vlmserve.server.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ToolCallDelta,
    ToolCallOut,
)
from vlmserve.tool_calls.grammar import tool_call_constraint
from vlmserve.tool_calls.parser import parse_tool_calls
from vlmserve.tool_calls.streaming import ToolCallStreamer
from vlmserve.tool_calls.types import ParsedOutput, Tool, ToolCallFormat

TOOL_CALLS = "tool_calls"  # the finish_reason of an answer that calls tools


@dataclass(frozen=True)
class ToolUse:
    """A request's tools, offered in its prompt: `choice` is "auto", "required" or the one tool's name."""

    tools: list[Tool]
    choice: str
    parallel: bool
    text_format: dict | None = None  # the JSON schema a text answer must match (response_format)

    @property
    def names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    def constraint(self, tool_format: ToolCallFormat) -> StructuredOutputsParams | None:
        """The output grammar the choice asks for, or None (auto without strict tools). ValueError names the tool
        a grammar cannot be made for."""
        if self.choice == "auto":
            if self.text_format is None and not any(tool.strict for tool in self.tools):
                return None
            return tool_call_constraint(tool_format, self.tools, parallel=self.parallel, allow_text=True,
                                        text_schema=self.text_format)
        only = None if self.choice == "required" else self.choice
        return tool_call_constraint(tool_format, self.tools, only=only, parallel=self.parallel)

    def message(self, text: str, finish: str | None) -> tuple[AssistantMessage, str | None]:
        """A whole answer: its content and calls, and its finish_reason ("tool_calls" when it ended calling)."""
        parsed = self.parse(text)
        calls = [ToolCallOut(id=_call_id(), function=FunctionCall(name=call.name, arguments=call.arguments_json))
                 for call in parsed.calls]
        return AssistantMessage(content=parsed.content, tool_calls=calls or None), finish_reason(parsed, finish)

    def parse(self, text: str) -> ParsedOutput:
        """A whole answer's content and the calls that count."""
        return self.kept(parse_tool_calls(text, self.names))

    def kept(self, parsed: ParsedOutput) -> ParsedOutput:
        """The calls the request lets count: only the first with parallel_tool_calls false, as OpenAI answers."""
        return parsed if self.parallel else ParsedOutput(parsed.content, parsed.calls[:1])

    def streamer(self) -> ToolCallStreamer:
        return ToolCallStreamer(self.names)


def resolve_tool_use(body: ChatCompletionRequest) -> ToolUse | None:
    """The request's tools and choice, checked as OpenAI checks them; None when no tool may be called."""
    tools = [Tool(t.function.name, t.function.description, t.function.parameters, bool(t.function.strict))
             for t in body.tools or []]
    choice = body.tool_choice
    if choice is not None and body.tools is None:
        raise APIError(400, "tool_choice is only allowed when tools are given", "tool_choice")
    names = [tool.name for tool in tools]
    duplicate = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if duplicate is not None:
        raise APIError(400, f"tools has two functions named {duplicate!r}; names must be unique", "tools")
    if not isinstance(choice, str) and choice is not None:
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice names function {choice.function.name!r}, which is not in tools",
                           "tool_choice.function.name")
        choice = choice.function.name
    choice = choice or ("auto" if tools else "none")
    if choice == "none" or not tools:
        return None
    return ToolUse(tools, choice, body.parallel_tool_calls is not False, _text_format(body))


def _text_format(body: ChatCompletionRequest) -> dict | None:
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        return None
    return {"type": "object"} if response_format.type == "json_object" else response_format.json_schema.schema_


def call_deltas(parsed: ParsedOutput) -> list[Delta]:
    """What a stream sends at the end of a choice: the content still held back, then per call a delta with its
    id, type and name, and one appending its arguments."""
    deltas = [] if parsed.content is None else [Delta(content=parsed.content)]
    for index, call in enumerate(parsed.calls):
        deltas.append(Delta(tool_calls=[ToolCallDelta(index=index, id=_call_id(), type="function",
                                                      function=FunctionCallDelta(name=call.name, arguments=""))]))
        deltas.append(Delta(tool_calls=[ToolCallDelta(index=index, function=FunctionCallDelta(
            arguments=call.arguments_json))]))
    return deltas


def finish_reason(parsed: ParsedOutput, finish: str | None) -> str | None:
    """"tool_calls" for an answer that ended (not cut short) having called tools."""
    return TOOL_CALLS if parsed.calls and finish == "stop" else finish


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
