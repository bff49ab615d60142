"""Helpers shared by the tokenizer tests: chat message builders, texts to round-trip, special-token checks."""

UNICODE_TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces \n\t",
    "Grüße aus Köln, ça va? ñandú",
    "日本語のテキストと中文文本",
    "Здравствуй, мир! مرحبا بالعالم हिन्दी",
    "emoji 🎉👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷",
]


def assert_special_token(tokenizer, token: str, token_id: int) -> None:
    assert tokenizer.token_to_id(token) == token_id
    assert tokenizer.id_to_token(token_id) == token
    assert tokenizer.is_special(token_id)


def user(*content) -> dict:
    """A user message: one string as plain content, anything else as a list of parts."""
    if len(content) == 1 and isinstance(content[0], str):
        return {"role": "user", "content": content[0]}
    return {"role": "user", "content": list(content)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image_url(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}
