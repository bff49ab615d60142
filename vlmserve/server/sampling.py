"""A validated request -> `SamplingParams`, with OpenAI's defaults; fields we cannot honour are refused here."""

from vlmserve.sampling_params import SamplingParams, StructuredOutputsParams
from vlmserve.server.errors import APIError
from vlmserve.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest

OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
                   "presence_penalty": 0.0, "repetition_penalty": 1.0}
_LEGACY_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}


def reject_unsupported(request: SamplingRequest) -> None:
    """What the request schema cannot say (the refused fields themselves are typed there, see UNSUPPORTED)."""
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")
    if isinstance(request, CompletionRequest) and request.best_of not in (None, request.n):
        raise APIError(400, "best_of is not supported (only best_of == n)", "best_of")


def structured_outputs(request: SamplingRequest, tool_constraint: StructuredOutputsParams | None = None
                       ) -> dict | StructuredOutputsParams | None:
    """One constraint from response_format, structured_outputs, the legacy guided_* fields or the tools' grammar
    (tool_choice, which holds response_format: it applies to text answers); two conflict."""
    found = _constraints(request, tool_constraint)
    if len(found) > 1:
        raise APIError(400, f"give only one output constraint; got {', '.join(found)}", sorted(found)[1])
    return next(iter(found.values()), None)


def constraint_error(request: SamplingRequest, error: ValueError,
                     tool_constraint: StructuredOutputsParams | None = None) -> APIError:
    """A 400 for a constraint the engine refused, naming the field the client sent it in: the engine names its
    own (`structured_outputs.<kind> ...`), which for response_format, tools or a guided_* field is not the
    client's."""
    message = str(error)
    source = next(iter(_constraints(request, tool_constraint)), None)
    own, _, rest = message.partition(" ")
    if source is None or not own.startswith("structured_outputs"):
        return APIError(400, message)
    param = {"response_format": "response_format.json_schema.schema", "structured_outputs": own}.get(source, source)
    return APIError(400, f"{param} {rest}", param)


def _constraints(request: SamplingRequest, tool_constraint: StructuredOutputsParams | None
                 ) -> dict[str, dict | StructuredOutputsParams]:
    """The output constraints the request gives, by the field that gives each."""
    found: dict[str, dict | StructuredOutputsParams] = {} if tool_constraint is None else {"tools": tool_constraint}
    if request.response_format is not None and request.response_format.type != "text" and tool_constraint is None:
        found["response_format"] = _from_response_format(request)
    if request.structured_outputs is not None:
        found["structured_outputs"] = request.structured_outputs.model_dump(by_alias=True, exclude_defaults=True)
    for field, key in _LEGACY_GUIDED.items():
        if getattr(request, field) is not None:
            found[field] = {key: getattr(request, field)}
    return found


def _from_response_format(request: SamplingRequest) -> dict:
    response_format = request.response_format
    if response_format.type == "json_object":
        return {"json_object": True}
    return {"json": response_format.json_schema.schema_}


def sampling_params(request: SamplingRequest, num_prompt_tokens: int, max_model_len: int,
                    max_output_tokens: int, tool_constraint: StructuredOutputsParams | None = None
                    ) -> SamplingParams:
    """OpenAI defaults for unset fields; max_tokens defaults to the room left in the context, capped by the
    server's output limit (None lets the engine work out the room, which may be less where the KV cache is).
    `tool_constraint`: the grammar the request's tool_choice asks for."""
    max_tokens = _max_tokens(request, num_prompt_tokens, max_model_len, max_output_tokens)
    values = {name: default if getattr(request, name) is None else getattr(request, name)
              for name, default in OPENAI_DEFAULTS.items()}
    constraint = structured_outputs(request, tool_constraint)
    extra = {} if constraint is None else {"structured_outputs": constraint}
    try:
        return SamplingParams(
            n=request.n, max_tokens=max_tokens, seed=request.seed, stop=request.stop,
            stop_token_ids=request.stop_token_ids, min_tokens=request.min_tokens, ignore_eos=request.ignore_eos,
            skip_special_tokens=request.skip_special_tokens,
            include_stop_str_in_output=request.include_stop_str_in_output, logprobs=_logprobs(request),
            **values, **extra)
    except ValueError as error:
        if str(error).startswith("structured_outputs"):
            raise constraint_error(request, error, tool_constraint) from None
        raise


def _max_tokens(request: SamplingRequest, num_prompt_tokens: int, max_model_len: int,
                max_output_tokens: int) -> int | None:
    name, asked = "max_tokens", request.max_tokens
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        name, asked = "max_completion_tokens", request.max_completion_tokens
    if asked is not None:
        if asked > max_output_tokens:
            raise APIError(400, f"{name} ({asked}) is more than this server's output limit ({max_output_tokens})",
                           name)
        return asked
    return None if max_model_len - num_prompt_tokens <= max_output_tokens else max_output_tokens


def _logprobs(request: SamplingRequest) -> int | None:
    if isinstance(request, CompletionRequest):
        return request.logprobs
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", "top_logprobs")
    return (request.top_logprobs or 0) if request.logprobs else None
