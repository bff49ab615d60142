"""Chats in the format of a model family, or of a tokenizer's family."""

from typing import Any

from vlmserve.families import MODEL_FAMILIES
from vlmserve.tokenizer.chat_messages import ChatFormatError, RenderedChat
from vlmserve.tokenizer.tokenizer import Tokenizer


def render_family_chat(family: str, messages: list[dict], **options: Any) -> RenderedChat:
    """Render in the chat format of the model family named `family` (its model_type)."""
    if family not in MODEL_FAMILIES:
        raise ChatFormatError(f"no chat format for model family {family!r}; supported: "
                              f"{', '.join(sorted(MODEL_FAMILIES))}")
    return MODEL_FAMILIES[family].render_chat(messages, **options)


def encode_chat(tokenizer: Tokenizer, messages: list[dict], **options: Any) -> tuple[list[int], list]:
    """Token ids of the chat rendered in the tokenizer's family format (no extra BOS) and its image sources.

    Message text is encoded as literal text, so special-token strings in it stay text (no forged turns or images).
    """
    rendered = render_family_chat(tokenizer.family, messages, **options)
    return tokenizer.encode_pieces(rendered.pieces), rendered.images
