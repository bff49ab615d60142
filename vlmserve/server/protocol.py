"""The OpenAI-compatible request and response bodies (plus vLLM's extras), as pydantic models.

Requests are strict: unknown fields are refused (400 naming them) rather than ignored, since a field this server
does not know would change the answer on the server that does; values keep their JSON types ("1" is not an
integer). Fields a client may send that we cannot honour are typed as the only values we accept (null, an empty
list, "none"), so the OpenAPI document says what is refused and a refusal names the field (`UNSUPPORTED`). Rules a
JSON schema cannot state (exactly one of prompt and messages, best_of == n, limits of the served model) are
checked in the handlers and answer 400.
"""

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlmserve.sampling_params import MAX_LOGPROBS
from vlmserve.server.request_types import (
    INT64_END,
    Count,
    Int64,
    Integer,
    JSONObject,
    NonEmptyText,
    PositiveInt64,
    Text,
    TokenId,
)

MAX_N = 128  # OpenAI's limit on completions per request
MAX_STOP_STRINGS = 64  # each generated token is checked against every stop string
MAX_STOP_STRING_CHARS = 4096
MAX_STOP_TOKEN_IDS = 256
MAX_TOOLS = 128  # OpenAI's limit on tools per request
Penalty = Annotated[float, Field(ge=-2, le=2)]
ImageURLString = Annotated[Text, Field(
    pattern=r"^([hH][tT][tT][pP][sS]?://|[dD][aA][tT][aA]:)",
    description="http(s) URL (fetched by the server) or data:image/<format>;base64,... URL")]

# Fields typed above as the only values this server accepts, and why it cannot honour the others.
UNSUPPORTED = {
    "functions": "the legacy functions field is not supported; send tools", "function_call": "the legacy "
    "function_call field is not supported; send tool_choice",
    "audio": "the models have no audio output", "modalities": "the models answer in text only",
    "prediction": "predicted outputs are not implemented", "reasoning_effort": "the models do not reason in a "
    "separate channel", "web_search_options": "this server does not search the web", "logit_bias": "logit_bias is "
    "not implemented", "echo": "echo is not implemented", "suffix": "suffix (insertion) is not implemented",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class ImageURL(Strict):
    url: ImageURLString
    detail: Literal["auto", "high", "low"] | None = Field(
        None, description="low: the image as one tile (the cheapest); auto and high: tiled at full resolution")


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class SystemMessageParam(Strict):
    role: Literal["system"]
    content: Text | list[TextPart]


class UserMessageParam(Strict):
    role: Literal["user"]
    content: Text | list[ContentPart]


ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="OpenAI's rule for function names")]


class ToolCallFunctionParam(Strict):
    name: Text
    arguments: Text = Field(description="the arguments as JSON text (an object)")


class ToolCallParam(Strict):
    id: Text
    type: Literal["function"]
    function: ToolCallFunctionParam


class AssistantMessageParam(Strict):
    role: Literal["assistant"]
    content: Text | list[TextPart] | None = None
    tool_calls: list[ToolCallParam] | None = None
    # What the openai client's message objects carry when a client sends one back: none of it changes the answer.
    refusal: None = None
    annotations: Annotated[list[Any], Field(max_length=0)] | None = None
    audio: None = None
    function_call: None = None


class ToolMessageParam(Strict):
    role: Literal["tool"]
    content: Text | list[TextPart]
    tool_call_id: Text


ChatMessage = Annotated[SystemMessageParam | UserMessageParam | AssistantMessageParam | ToolMessageParam,
                        Field(discriminator="role")]


class FunctionDefinition(Strict):
    name: ToolName
    description: Text | None = None
    parameters: JSONObject | None = Field(None, description="a JSON schema of the arguments object; omitted: none")
    strict: bool | None = Field(None, description="true: every call's arguments match the schema (by grammar)")


class ToolParam(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(Strict):
    name: Text


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: ToolChoiceFunction


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(None, description="accepted; deltas are never padded")


class JSONSchema(Strict):
    name: Text
    description: Text | None = None
    schema_: JSONObject = Field(alias="schema")
    strict: bool | None = None


class TextFormat(Strict):
    type: Literal["text"]


class JSONObjectFormat(Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class StructuredOutputs(Strict):
    """vLLM's structured_outputs: exactly one of json, json_object, regex, choice, grammar."""

    json_: JSONObject | Text | None = Field(None, alias="json", description="a JSON schema (object or JSON text)")
    json_object: bool = False
    regex: NonEmptyText | None = None
    choice: Annotated[list[Text], Field(min_length=1)] | None = None
    grammar: NonEmptyText | None = Field(None, description="EBNF as xgrammar reads it (rule `root`)")
    disable_any_whitespace: bool = False


class HarmlessMetadata(Strict):
    """Fields OpenAI's SDKs send that change nothing this server answers: accepted, never acted on."""

    user: Text | None = None
    metadata: JSONObject | None = None
    service_tier: Text | None = None
    prompt_cache_key: Text | None = None
    prompt_cache_retention: Text | None = None
    safety_identifier: Text | None = None


class SamplingRequest(HarmlessMetadata):
    """Fields shared by chat and completions: the model, sampling, stopping, streaming and output format."""

    model: Text | None = Field(None, description="the served model name; omitted means the one served")
    max_tokens: PositiveInt64 | None = Field(
        None, description="default: the room left in the context; at most the server's output limit")
    temperature: float | None = Field(None, ge=0, le=2, description="default 1; 0 is greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: Annotated[Integer, Field(ge=-1, lt=INT64_END)] | None = Field(None, description="0 or -1: off")
    min_p: float | None = Field(None, ge=0, le=1)
    stop: (Annotated[NonEmptyText, Field(max_length=MAX_STOP_STRING_CHARS)]
           | Annotated[list[Annotated[NonEmptyText, Field(max_length=MAX_STOP_STRING_CHARS)]],
                       Field(max_length=MAX_STOP_STRINGS)]
           | None) = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    repetition_penalty: float | None = Field(None, gt=0)
    seed: Int64 | None = None
    n: Integer = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    response_format: ResponseFormat | None = None
    # vLLM extras
    min_tokens: Count = Field(0, description="at most max_tokens")
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputs | None = None
    guided_json: JSONObject | Text | None = None
    guided_regex: NonEmptyText | None = None
    guided_choice: Annotated[list[Text], Field(min_length=1)] | None = None
    guided_grammar: NonEmptyText | None = None
    store: bool | None = Field(None, description="accepted; nothing is stored")
    priority: Int64 = Field(0, description="vLLM extra: lower runs first; needs --scheduling-policy priority")
    # Unsupported: only the values that change nothing.
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt64 | None = Field(
        None, description="the newer name of max_tokens; it wins when both are given")
    logprobs: bool = False
    top_logprobs: Integer | None = Field(None, ge=0, le=MAX_LOGPROBS, description="needs logprobs: true")
    add_generation_prompt: bool | None = Field(
        None, description="default: true unless the last message is from the assistant")
    continue_final_message: bool | None = Field(
        None, description="default: true when the last message is from the assistant (its text is continued)")
    tools: Annotated[list[ToolParam], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="default: auto with tools, none without; required and a named function are enforced by "
                          "the output grammar")
    parallel_tool_calls: bool | None = Field(None, description="default true (Llama 3.2 writes one call at most)")
    verbosity: Literal["low", "medium", "high"] | None = Field(
        None, description="accepted; these models have no verbosity setting")
    functions: Annotated[list[Any], Field(max_length=0)] | None = None
    function_call: Literal["none"] | None = None
    audio: None = None
    modalities: Annotated[list[Literal["text"]], Field(min_length=1, max_length=1)] | None = None
    prediction: None = None
    reasoning_effort: None = None
    web_search_options: None = None


class CompletionRequest(SamplingRequest):
    prompt: Text | Annotated[list[TokenId], Field(min_length=1)] = Field(
        description="a string or a list of token ids")
    logprobs: Integer | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Literal[False] = False
    suffix: Annotated[str, Field(max_length=0)] | None = None
    best_of: Integer | None = Field(None, ge=1, le=MAX_N, description="only equal to n")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    num_images: int = Field(description="vlmserve: images in the prompt (each also counts one prompt token)")
    num_image_tiles: int = Field(description="vlmserve: the tiles the images were cut into (detail low: one each)")
    cost: float = Field(description="vlmserve: USD from the server's price table")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON text")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=lambda v: v is None)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None
    stop_reason: int | str | None = Field(None, description="vLLM: the stop string or token id that ended it")


def _now() -> int:
    return int(time.time())


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    name: str | None = Field(None, exclude_if=lambda v: v is None)
    arguments: str


class ToolCallDelta(BaseModel):
    """The first delta of a call carries its id, type and name (arguments ""); later ones append arguments."""

    index: int
    id: str | None = Field(None, exclude_if=lambda v: v is None)
    type: Literal["function"] | None = Field(None, exclude_if=lambda v: v is None)
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=lambda v: v is None)
    content: str | None = Field(None, exclude_if=lambda v: v is None)
    tool_calls: list[ToolCallDelta] | None = Field(None, exclude_if=lambda v: v is None)


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "vlmserve"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(Strict):
    """vLLM's /tokenize: exactly one of a `prompt` or chat `messages` (images count one <|image|> token each)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})

    model: Text | None = None
    prompt: Text = Field(None, description="raw text (special-token strings in it are special tokens)")
    messages: list[ChatMessage] = Field(None, min_length=1)
    add_special_tokens: bool | None = Field(None, description="prompt: default true (adds the BOS); messages: "
                                                              "default false (the chat format writes it)")
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(Strict):
    model: Text | None = None
    tokens: list[TokenId] = Field(description="ids in the tokenizer's vocabulary")


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: Literal["ok", "engine stopped"]


class Readiness(BaseModel):
    status: Literal["ready", "draining", "engine stopped"]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail
