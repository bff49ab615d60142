"""vLLM's POST /tokenize and /detokenize: what the server would feed the model, without running it."""

from fastapi import Request

from vlmserve.families.chat import encode_chat
from vlmserve.server.engine_client import EngineClient
from vlmserve.server.errors import APIError
from vlmserve.server.protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from vlmserve.server.serving_chat import chat_options


def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Chat messages are encoded as the chat endpoint encodes them (message text as literal text), each image
    one <|image|> token and never fetched."""
    client: EngineClient = request.app.state.client
    client.check_model(body.model)
    client.check_prompt_size(body)
    if body.prompt is not None:
        tokens = client.engine.tokenize(body.prompt, add_special_tokens=body.add_special_tokens is not False)
    else:
        tokenizer = client.engine.tokenizer
        messages = [message.model_dump(exclude_none=True) for message in body.messages]
        chat_ids, _ = encode_chat(tokenizer, messages, **chat_options(body))
        tokens = [tokenizer.bos_token_id, *chat_ids] if body.add_special_tokens else chat_ids
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=client.engine.max_model_len)


def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    client: EngineClient = request.app.state.client
    client.check_model(body.model)
    tokenizer = client.engine.tokenizer
    vocab_size = tokenizer.vocab_size
    bad = [t for t in body.tokens if t >= vocab_size]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})", "tokens")
    return DetokenizeResponse(prompt=tokenizer.decode(body.tokens))
