"""A validated request -> `SamplingParams`, with OpenAI's defaults; fields we cannot honour are refused here."""

from vlmserve.sampling_params import SamplingParams
from vlmserve.server.errors import APIError
from vlmserve.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest

OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
                   "presence_penalty": 0.0, "repetition_penalty": 1.0}
# Set to anything but these values, each field would change the answer on a server that supports it.
_REFUSED_CHAT = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,), "reasoning_effort": (None,),
    "web_search_options": (None,),
}
_REFUSED_COMPLETIONS = {"echo": (False,), "suffix": (None, "")}
_LEGACY_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}


def reject_unsupported(request: SamplingRequest) -> None:
    refused = _REFUSED_CHAT if isinstance(request, ChatCompletionRequest) else _REFUSED_COMPLETIONS
    for name, allowed in refused.items():
        if getattr(request, name) not in allowed:
            raise APIError(400, f"{name} is not supported by this server (Llama 3.2 Vision is served for text "
                                "output without tool calling)", name)
    if request.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server", "logit_bias")
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")
    if isinstance(request, CompletionRequest) and request.best_of not in (None, request.n):
        raise APIError(400, "best_of is not supported (only best_of == n)", "best_of")
    if isinstance(request, ChatCompletionRequest):
        _reject_low_detail(request)


def _reject_low_detail(request: ChatCompletionRequest) -> None:
    """Images are always tiled at full resolution; a client asking for a cheap low-detail pass must know."""
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            if part.type == "image_url" and part.image_url.detail == "low":
                raise APIError(400, "image detail 'low' is not supported: images are processed at full "
                                    "resolution ('auto' or 'high')", f"messages.{i}.content.{j}.image_url.detail")


def structured_outputs(request: SamplingRequest) -> dict | None:
    """One constraint from response_format, structured_outputs or the legacy guided_* fields; two conflict."""
    found = {}
    if request.response_format is not None and request.response_format.type != "text":
        found["response_format"] = _from_response_format(request)
    if request.structured_outputs is not None:
        found["structured_outputs"] = request.structured_outputs
    for field, key in _LEGACY_GUIDED.items():
        if getattr(request, field) is not None:
            found[field] = {key: getattr(request, field)}
    if len(found) > 1:
        raise APIError(400, f"give only one output constraint; got {', '.join(found)}", sorted(found)[1])
    return next(iter(found.values()), None)


def _from_response_format(request: SamplingRequest) -> dict:
    response_format = request.response_format
    if response_format.type == "json_object":
        return {"json_object": True}
    if response_format.json_schema is None or response_format.json_schema.schema_ is None:
        raise APIError(400, "response_format json_schema needs json_schema.schema", "response_format.json_schema")
    return {"json": response_format.json_schema.schema_}


def sampling_params(request: SamplingRequest, num_prompt_tokens: int, max_model_len: int,
                    max_output_tokens: int) -> SamplingParams:
    """OpenAI defaults for unset fields; max_tokens defaults to the room left in the context, capped by the
    server's output limit (None lets the engine work out the room, which may be less where the KV cache is)."""
    max_tokens = _max_tokens(request, num_prompt_tokens, max_model_len, max_output_tokens)
    values = {name: default if getattr(request, name) is None else getattr(request, name)
              for name, default in OPENAI_DEFAULTS.items()}
    constraint = structured_outputs(request)
    extra = {} if constraint is None else {"structured_outputs": constraint}
    return SamplingParams(
        n=request.n, max_tokens=max_tokens, seed=request.seed, stop=request.stop,
        stop_token_ids=request.stop_token_ids, min_tokens=request.min_tokens, ignore_eos=request.ignore_eos,
        skip_special_tokens=request.skip_special_tokens,
        include_stop_str_in_output=request.include_stop_str_in_output, logprobs=_logprobs(request),
        **values, **extra)


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
