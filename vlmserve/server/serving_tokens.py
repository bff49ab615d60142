"""vLLM's POST /tokenize and /detokenize: what the server would feed the model, without running it."""

from fastapi import Request

from vlmserve.server.engine_client import EngineClient
from vlmserve.server.errors import APIError
from vlmserve.server.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from vlmserve.server.serving_chat import chat_options
from vlmserve.tokenizer.chat_format import render_family_chat


def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Chat messages are rendered in the chat format (each image is one <|image|> token, never fetched)."""
    client: EngineClient = request.app.state.client
    client.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt and messages", "prompt")
    tokenizer = client.llm.tokenizer
    if body.prompt is not None:
        add_special_tokens = body.add_special_tokens is not False
        prompt = client.llm.input_processor.with_bos(body.prompt) if add_special_tokens else body.prompt
        tokens = tokenizer.encode(prompt)
    else:
        messages = [message.model_dump(exclude_none=True) for message in body.messages]
        tokens = tokenizer.encode(render_family_chat(tokenizer.family, messages, **chat_options(body)).prompt,
                                  add_bos=bool(body.add_special_tokens))
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=client.max_model_len)


def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    client: EngineClient = request.app.state.client
    client.check_model(body.model)
    vocab_size = client.llm.tokenizer.vocab_size
    bad = [t for t in body.tokens if t >= vocab_size]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})", "tokens")
    return DetokenizeResponse(prompt=client.llm.tokenizer.decode(body.tokens))
