"""The OpenAPI document of one running server: the request models' schema, plus the limits of this server and
its model (output tokens, vocabulary, prompt size), so that generated clients and fuzzers see what it accepts.

FastAPI also documents a 422 for every body; this server answers validation errors with 400 (OpenAI's status),
so the 422 and its schemas are dropped. A streamed answer is documented event by event (OpenAPI 3.1 reads a
text/event-stream schema as one event's): its `data` is a chunk or an error body as JSON, or the final [DONE];
a Responses stream's events are named (`event`) and their `data` is the event as JSON.
"""

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from vlmserve.server.protocol import ChatCompletionChunk, CompletionResponse, ErrorResponse
from vlmserve.server.responses_protocol import ResponseStreamEvent

STREAMS = {"/v1/chat/completions": ChatCompletionChunk, "/v1/completions": CompletionResponse}
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class ServedLimits:
    max_output_tokens: int
    vocab_size: int  # ids /detokenize knows
    num_embeddings: int  # ids a prompt may hold (the vocabulary plus image placeholders)
    max_prompt_chars: int


def describe_server(app: FastAPI, limits: ServedLimits) -> None:
    """Serve `app.openapi()` with `limits` written into the request schemas."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            _drop_validation_422(document)
            for path, chunk in STREAMS.items():
                _document_stream(document, path, chunk)
            _document_named_stream(document, "/v1/responses", ResponseStreamEvent)
            _write_limits(document["components"]["schemas"], limits)
            app.openapi_schema = document
        return app.openapi_schema
    app.openapi = openapi


def _drop_validation_422(document: dict) -> None:
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(name, None)


def _document_stream(document: dict, path: str, chunk: type[BaseModel]) -> None:
    schemas = document["components"]["schemas"]
    for model in (chunk, ErrorResponse):
        definition = model.model_json_schema(ref_template=REF)
        schemas.update(definition.pop("$defs", {}))
        schemas.setdefault(model.__name__, definition)
    payload = {"anyOf": [{"$ref": REF.format(model=chunk.__name__)}, {"$ref": REF.format(model="ErrorResponse")}]}
    event = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json", "contentSchema": payload}]}}}
    content = document["paths"][path]["post"]["responses"]["200"]["content"]
    content["text/event-stream"] = {"schema": event}


def _document_named_stream(document: dict, path: str, model: type[BaseModel]) -> None:
    document["components"]["schemas"].setdefault(model.__name__, model.model_json_schema(ref_template=REF))
    event = {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string"}, "data": {"type": "string", "contentMediaType": "application/json",
                                              "contentSchema": {"$ref": REF.format(model=model.__name__)}}}}
    document["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"] = {"schema": event}


def _write_limits(schemas: dict, limits: ServedLimits) -> None:
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        for field in ("max_tokens", "max_completion_tokens", "min_tokens"):
            _bound(schemas[request]["properties"].get(field), "integer", maximum=limits.max_output_tokens)
    _bound(schemas["ResponsesRequest"]["properties"]["max_output_tokens"], "integer",
           maximum=limits.max_output_tokens)
    _bound(schemas["CompletionRequest"]["properties"]["prompt"], "integer", maximum=limits.num_embeddings - 1)
    _bound(schemas["DetokenizeRequest"]["properties"]["tokens"], "integer", maximum=limits.vocab_size - 1)
    for request in ("CompletionRequest", "TokenizeRequest"):
        _bound(schemas[request]["properties"]["prompt"], "string", maxLength=limits.max_prompt_chars)


def _bound(schema: dict | None, kind: str, **bounds) -> None:
    """Set `bounds` on every `kind` value `schema` admits: itself, its anyOf branches, its array items."""
    if schema is None:
        return
    if schema.get("type") == kind:
        schema.pop("exclusiveMaximum", None)
        schema.update(bounds)
    for branch in schema.get("anyOf", ()):
        _bound(branch, kind, **bounds)
    if "items" in schema:
        _bound(schema["items"], kind, **bounds)
