"""A Responses request as the chat request the chat path answers, and that answer as Responses output items.

Input items become chat messages: user, system and developer (system) messages with input_text/input_image
parts; assistant messages sent back; function_call items as the calls of an assistant message (joined to the
message before them); function_call_output items as tool messages. `instructions` become the leading system
message, joined to the one the turns start with, if any. Errors the chat path raises name chat's fields; the
conversation knows where each message came from, so they name the client's own (`input.3.content.0`).
"""

import re
import uuid
from dataclasses import dataclass

from pydantic import ValidationError

from vlmserve.server.errors import APIError
from vlmserve.server.protocol import ChatCompletionRequest
from vlmserve.server.responses_protocol import (
    AssistantItem,
    FunctionCallItem,
    FunctionCallOut,
    FunctionCallOutputItem,
    InputImage,
    InputMessage,
    NamedFunction,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponsesRequest,
    TextFormatJSONSchema,
)
from vlmserve.tool_calls.types import ToolCall

_CHAT_FIELDS = [  # chat's name -> the Responses name (a regex over dotted params and message text)
    (re.compile(r"\bmax_completion_tokens\b"), "max_output_tokens"),
    (re.compile(r"\bresponse_format(\.json_schema)?"), "text.format"),
    (re.compile(r"\btools([.\[]\d+\]?)\.function\b"), r"tools\1"),
]
_MESSAGE_DOTTED = re.compile(r"\bmessages\.(\d+)")
_MESSAGE_BRACKETED = re.compile(r"\bmessages\[(\d+)\]")


@dataclass
class Conversation:
    """The turns as chat messages (plain dicts, images as the client sent them; what a stored response keeps),
    where the client wrote each ("input.3", "input" or "previous_response_id"), and the instructions."""

    turns: list[dict]
    origins: list[str]
    instructions: str | None = None

    @property
    def messages(self) -> list[dict]:
        """The chat messages: the instructions first, joined to the system message the turns start with, if any."""
        if self.instructions is None:
            return list(self.turns)
        if self.turns and self.turns[0]["role"] == "system":
            existing = self.turns[0]["content"]
            if not isinstance(existing, str):
                existing = "".join(part["text"] for part in existing)
            return [{"role": "system", "content": f"{self.instructions}\n\n{existing}"}, *self.turns[1:]]
        return [{"role": "system", "content": self.instructions}, *self.turns]

    def client_error(self, error: APIError) -> APIError:
        """The chat path's error, naming the client's fields."""
        param = None if error.param is None else self._renamed(error.param, bracketed=False)
        return APIError(error.status, self._renamed(error.message, bracketed=True), param, error.headers)

    def _renamed(self, text: str, *, bracketed: bool) -> str:
        for pattern, name in _CHAT_FIELDS:
            text = pattern.sub(name, text)
        text = _MESSAGE_DOTTED.sub(lambda match: self._origin(int(match[1]), bracketed=False), text)
        if bracketed:
            text = _MESSAGE_BRACKETED.sub(lambda match: self._origin(int(match[1]), bracketed=True), text)
        return re.sub(r"\bmessages\b", "input", text)

    def _origin(self, index: int, *, bracketed: bool) -> str:
        origins = self.origins
        if self.instructions is not None and not (self.turns and self.turns[0]["role"] == "system"):
            origins = ["instructions", *origins]
        origin = origins[index] if index < len(origins) else "input"
        head, _, position = origin.partition(".")
        return f"{head}[{position}]" if bracketed and position else origin


def conversation(body: ResponsesRequest, history: list[dict]) -> Conversation:
    """The whole conversation: the stored turns of previous_response_id, the input, and the instructions."""
    turns = list(history)
    origins = ["previous_response_id"] * len(history)
    if isinstance(body.input, str):
        turns.append({"role": "user", "content": body.input})
        origins.append("input")
    else:
        for index, item in enumerate(body.input):
            _add_item(turns, origins, item, f"input.{index}")
    return Conversation(turns, origins, body.instructions)


def chat_request(body: ResponsesRequest, messages: list[dict]) -> ChatCompletionRequest:
    """The chat request that asks what `body` asks."""
    fields = {"model": body.model, "messages": messages, "max_completion_tokens": body.max_output_tokens,
              "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
              "parallel_tool_calls": body.parallel_tool_calls, "priority": body.priority}
    text_format = None if body.text is None else body.text.format
    if isinstance(text_format, TextFormatJSONSchema):
        fields["response_format"] = {"type": "json_schema",
                                     "json_schema": text_format.as_json_schema().model_dump(by_alias=True)}
    elif text_format is not None:
        fields["response_format"] = {"type": text_format.type}
    if body.tools is not None:
        fields["tools"] = [{"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                           for tool in body.tools]
    if isinstance(body.tool_choice, NamedFunction):
        fields["tool_choice"] = {"type": "function", "function": {"name": body.tool_choice.name}}
    else:
        fields["tool_choice"] = body.tool_choice
    try:
        return ChatCompletionRequest.model_validate({name: value for name, value in fields.items()
                                                     if value is not None})
    except ValidationError as error:  # a rule of chat's the Responses types do not state
        first = error.errors()[0]
        raise APIError(400, first["msg"], ".".join(map(str, first["loc"]))) from None


def answer_message(content: str | None, calls: list[ToolCall], call_ids: list[str]) -> dict:
    """The answer as a chat assistant message, for the stored conversation."""
    message: dict = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": {
            "name": call.name, "arguments": call.arguments_json}} for call, call_id in zip(calls, call_ids)]
    return message


def output_items(message_id: str, content: str | None, calls: list[ToolCall], call_ids: list[str],
                 status: str) -> list[OutputItem]:
    items: list[OutputItem] = []
    if content is not None:
        items.append(OutputMessage(id=message_id, status=status, content=[OutputText(text=content)]))
    items.extend(FunctionCallOut(id=f"fc_{uuid.uuid4().hex}", call_id=call_id, name=call.name,
                                 arguments=call.arguments_json, status="completed")
                 for call, call_id in zip(calls, call_ids))
    return items


def _add_item(messages: list[dict], origins: list[str], item, where: str) -> None:
    if isinstance(item, FunctionCallItem):
        call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        if messages and messages[-1]["role"] == "assistant" and origins[-1] != "previous_response_id":
            messages[-1].setdefault("tool_calls", []).append(call)
            return
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
    elif isinstance(item, FunctionCallOutputItem):
        message = {"role": "tool", "tool_call_id": item.call_id, "content": _text_content(item.output)}
    elif isinstance(item, AssistantItem):
        message = {"role": "assistant", "content": _text_content(item.content)}
    else:
        message = _input_message(item, where)
    messages.append(message)
    origins.append(where)


def _input_message(item: InputMessage, where: str) -> dict:
    role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return {"role": role, "content": item.content}
    image = next((index for index, part in enumerate(item.content) if isinstance(part, InputImage)), None)
    if role == "system" and image is not None:
        raise APIError(400, f"{where} is a {item.role} message with an image; put images in user messages",
                       f"{where}.content.{image}")
    parts = [{"type": "image_url", "image_url": _image_url(part)} if isinstance(part, InputImage)
             else {"type": "text", "text": part.text} for part in item.content]
    return {"role": role, "content": parts}


def _image_url(part: InputImage) -> dict:
    detail = {None: None, "auto": None, "low": "low"}.get(part.detail, "high")  # "original": full resolution
    return {"url": part.image_url} if detail is None else {"url": part.image_url, "detail": detail}


def _text_content(content) -> str | list[dict]:
    return content if isinstance(content, str) else [{"type": "text", "text": part.text} for part in content]
