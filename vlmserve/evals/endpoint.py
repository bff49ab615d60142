"""One OpenAI-compatible chat endpoint under evaluation, and the retrying client that asks it.

A request that still fails after the retries raises EndpointError; the runner records it as an error, never
as a wrong answer, and asks again on the next run.
"""

import asyncio
import email.utils
import hashlib
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

RETRYABLE_STATUS = {408, 409, 429}  # and every 5xx


@dataclass(frozen=True)
class Endpoint:
    """url: the server (`http://host:8000`), its `/v1` base, or the full `/v1/chat/completions` URL."""
    url: str
    model: str
    api_key: str | None = None

    @property
    def chat_url(self) -> str:
        url = self.url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")

    @property
    def key(self) -> str:
        """Names this endpoint's cache directory: cached answers are only reused for the same URL and model."""
        digest = hashlib.sha256(f"{self.chat_url}\n{self.model}".encode()).hexdigest()[:10]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.model)
        return f"{safe}-{digest}"

    def describe(self) -> str:
        return f"{self.model}@{urlsplit(self.chat_url).netloc}"


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None  # usage.cost in USD, where the server sends it (vlmserve does)
    latency_s: float  # of the successful attempt
    attempts: int


class EndpointError(Exception):
    """The endpoint gave no answer after the retries (or refused the request outright)."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: backoff_s * 2**attempt, at most max_backoff_s; a 429's Retry-After
    is honoured when it asks for longer."""
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
        return max(backoff, retry_after or 0.0)


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the other form RFC 9110 allows: an HTTP date
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _parse(body: dict, latency_s: float, attempts: int) -> Completion:
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as err:
        raise EndpointError(f"malformed response (no choices[0].message.content): {str(body)[:200]}", attempts) from err
    usage = body.get("usage") or {}
    return Completion(text=text or "", finish_reason=choice.get("finish_reason"),
                      prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                      cost=usage.get("cost"), latency_s=latency_s, attempts=attempts)


async def chat(client: httpx.AsyncClient, endpoint: Endpoint, body: dict, policy: RetryPolicy) -> Completion:
    """POST `body` (model added) to the endpoint, retrying 429, 5xx, timeouts and connection errors."""
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    payload = {"model": endpoint.model, **body}
    attempts = policy.max_retries + 1
    for attempt in range(attempts):
        retry_after = None
        start = time.perf_counter()
        try:
            response = await client.post(endpoint.chat_url, json=payload, headers=headers)
        except httpx.TransportError as err:  # timeouts, refused or dropped connections
            problem = f"{type(err).__name__}: {err}".rstrip(": ")
        else:
            latency_s = time.perf_counter() - start
            if response.status_code == 200:
                try:
                    return _parse(response.json(), latency_s, attempt + 1)
                except ValueError:
                    problem = f"HTTP 200 with a body that is not JSON: {response.text[:200]}"
            else:
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRYABLE_STATUS and response.status_code < 500:
                    raise EndpointError(problem, attempt + 1)
                retry_after = _retry_after_s(response)
        if attempt + 1 < attempts:
            await asyncio.sleep(policy.delay(attempt, retry_after))
    raise EndpointError(problem, attempts)
