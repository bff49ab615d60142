"""OpenAI's Responses API bodies (/v1/responses): the request, the response object and its stream's events.

Requests are strict as chat's are (protocol): unknown fields are refused, fields that would change the answer
and that this server cannot honour are typed as the only values that change nothing, and fields that change
nothing (prompt_cache_key, safety_identifier, verbosity, ...) are accepted.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from vlmserve.server.protocol import MAX_TOOLS, HarmlessMetadata, ImageURLString, JSONSchema, Strict, ToolName
from vlmserve.server.request_types import Int64, JSONObject, PositiveInt64, Text

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputText(Strict):
    type: Literal["input_text"]
    text: Text


class InputImage(Strict):
    type: Literal["input_image"]
    image_url: ImageURLString = Field(description="http(s) URL or data: URL (file_id is not supported)")
    detail: Literal["auto", "high", "low", "original"] | None = Field(
        None, description="low: the image as one tile (the cheapest); the others: tiled at full resolution")
    file_id: None = None


class OutputTextParam(Strict):
    type: Literal["output_text"]
    text: Text
    annotations: Annotated[list[Any], Field(max_length=0)] | None = None
    logprobs: list[Any] | None = None


InputContent = Annotated[InputText | InputImage, Field(discriminator="type")]


class InputMessage(Strict):
    """A user, system or developer message (developer is OpenAI's newer name for system)."""

    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer"]
    content: Text | list[InputContent]
    id: Text | None = None
    status: ItemStatus | None = None


class AssistantItem(Strict):
    """An earlier answer sent back, as the SDK's output items are."""

    type: Literal["message"] | None = None
    role: Literal["assistant"]
    content: Text | list[OutputTextParam]
    id: Text | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: Text
    name: Text
    arguments: Text = Field(description="JSON text (an object)")
    id: Text | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: Text
    output: Text | list[InputText]
    id: Text | None = None
    status: ItemStatus | None = None


def _item_kind(item: Any) -> str | None:
    if isinstance(item, BaseModel):
        item = item.model_dump()
    if not isinstance(item, dict):
        return None
    kind = item.get("type", "message")
    return ("assistant" if item.get("role") == "assistant" else "message") if kind == "message" else kind


InputItem = Annotated[Annotated[InputMessage, Tag("message")] | Annotated[AssistantItem, Tag("assistant")]
                      | Annotated[FunctionCallItem, Tag("function_call")]
                      | Annotated[FunctionCallOutputItem, Tag("function_call_output")], Discriminator(_item_kind)]


class FunctionTool(Strict):
    type: Literal["function"]
    name: ToolName
    description: Text | None = None
    parameters: JSONObject | None = None
    strict: bool | None = Field(None, description="true: every call's arguments match the schema (by grammar)")


class NamedFunction(Strict):
    type: Literal["function"]
    name: Text


class TextFormatText(Strict):
    type: Literal["text"]


class TextFormatJSONObject(Strict):
    type: Literal["json_object"]


class TextFormatJSONSchema(Strict):
    type: Literal["json_schema"]
    name: Text
    schema_: JSONObject = Field(alias="schema")
    description: Text | None = None
    strict: bool | None = None

    def as_json_schema(self) -> JSONSchema:
        return JSONSchema(name=self.name, schema=self.schema_, description=self.description, strict=self.strict)


class TextConfig(Strict):
    format: Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema,
                      Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = Field(
        None, description="accepted; these models have no verbosity setting")


class StreamOptions(Strict):
    include_obfuscation: bool | None = Field(None, description="accepted; deltas are never padded")


UNSUPPORTED_TOOL = "only function tools are supported; this server has no built-in {kind} tool"


class ResponsesRequest(HarmlessMetadata):
    model: Text | None = Field(None, description="the served model name; omitted means the one served")
    input: Text | Annotated[list[InputItem], Field(min_length=1)]
    instructions: Text | None = Field(None, description="a system message before the input (not carried over by "
                                                        "previous_response_id)")
    previous_response_id: Text | None = Field(None, description="continue a stored response (needs --data-dir)")
    max_output_tokens: PositiveInt64 | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: Int64 | None = Field(None, description="vLLM extra")
    text: TextConfig | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool | None = Field(None, description="default true: kept when the server has --data-dir")
    truncation: Literal["disabled"] | None = Field(None, description="'auto' (dropping input) is not supported")
    priority: Int64 = Field(0, description="vLLM extra: lower runs first; needs --scheduling-policy priority")
    # Unsupported: only the values that change nothing.
    include: Annotated[list[Any], Field(max_length=0)] | None = None
    reasoning: None = None
    background: Literal[False] | None = None
    max_tool_calls: None = None
    top_logprobs: Literal[0] | None = None
    conversation: None = None
    prompt: None = None

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, tools: Any) -> Any:
        for tool in tools if isinstance(tools, list) else []:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind != "function":
                raise ValueError(UNSUPPORTED_TOOL.format(kind=repr(kind)))
        return tools


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallOut(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str = Field(description="JSON text")
    status: ItemStatus


OutputItem = Annotated[OutputMessage | FunctionCallOut, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int
    num_images: int = Field(description="vlmserve: images in the prompt")
    num_image_tiles: int = Field(description="vlmserve: the tiles the images were cut into (detail low: one each)")
    cost: float = Field(description="vlmserve: USD from the server's price table")


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    incomplete_details: IncompleteDetails | None = None
    error: None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict = Field(default_factory=lambda: {"format": {"type": "text"}})
    tools: list[dict] = Field(default_factory=list)
    tool_choice: str | dict = "auto"
    parallel_tool_calls: bool = True
    store: bool = False
    metadata: dict = Field(default_factory=dict)
    truncation: Literal["disabled"] = "disabled"


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: Literal[True] = True


class ResponseStreamEvent(BaseModel):
    """One event of a Responses stream (its other fields depend on its type), for the OpenAPI document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="response.created, response.output_text.delta, ..., response.completed, error")
    sequence_number: int
