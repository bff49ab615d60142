"""Chat messages from a client -> messages the input processor may take: limits checked, remote images fetched.

Only http(s) and data: URLs are accepted from clients; a path or file:// URL would read the server's disk.
"""

import asyncio

from vlmserve.server.errors import APIError
from vlmserve.server.image_fetch import ImageFetcher
from vlmserve.server.protocol import ChatMessage


async def resolve_images(messages: list[ChatMessage], fetcher: ImageFetcher, *, max_images: int,
                         max_image_bytes: int) -> list[dict]:
    """Plain-dict messages in which every http(s) image_url part became an `image` part holding its bytes."""
    plain = [message.model_dump(exclude_none=True) for message in messages]
    parts = [(f"messages.{i}.content.{j}", part) for i, message in enumerate(plain)
             for j, part in enumerate(message.get("content") if isinstance(message.get("content"), list) else [])
             if part["type"] == "image_url"]
    if len(parts) > max_images:
        raise APIError(413, f"the request has {len(parts)} images; this server takes at most {max_images}",
                       "messages")
    remote = []
    for where, part in parts:
        url = part["image_url"]["url"]
        scheme = url.partition(":")[0].lower()  # schemes are case-insensitive (RFC 3986)
        if scheme in ("http", "https") and url[len(scheme):].startswith("://"):
            remote.append(part)
        elif scheme == "data":
            _check_data_url_size(url, max_image_bytes, where)
        else:
            raise APIError(400, f"{where}: image URLs must be http(s):// or data:image/...;base64 URLs",
                           f"{where}.image_url.url")
    fetched = await asyncio.gather(*(fetcher.fetch(part["image_url"]["url"]) for part in remote))
    for part, data in zip(remote, fetched):
        detail = part["image_url"].get("detail")
        part.clear()
        part.update(type="image", image=data, **({} if detail is None else {"detail": detail}))
    return plain


def _check_data_url_size(url: str, max_image_bytes: int, where: str) -> None:
    payload = url.partition(",")[2]
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > max_image_bytes:
        raise APIError(413, f"{where}: the image has {size} bytes; this server takes at most {max_image_bytes}",
                       f"{where}.image_url.url")
