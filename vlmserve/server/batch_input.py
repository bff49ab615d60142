"""A batch's input file, OpenAI's JSONL: one request per line, `{"custom_id", "method": "POST", "url", "body"}`.

The whole file is checked before a batch is created (every line a request to the batch's endpoint, custom_ids
unique, at most the server's line limit), so a batch only ever runs lines it can name; a body the endpoint
refuses is that line's error, not the batch's. Blank lines are skipped; lines are numbered from 1 in messages.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


@dataclass(frozen=True)
class BatchLine:
    index: int  # among the file's non-blank lines, from 0: the key its answer is recorded under
    custom_id: str
    url: str
    body: dict


class BatchInputError(ValueError):
    pass


def read_lines(path: str | Path, endpoint: str | None = None) -> Iterator[BatchLine]:
    """The file's requests in order; BatchInputError naming the first line that is not one (to `endpoint`, when
    given; else to any endpoint a batch may call)."""
    index = 0
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            if raw.strip():
                yield _parse(raw, number, index, endpoint)
                index += 1


def check_input(path: str | Path, endpoint: str | None, max_lines: int) -> int:
    """The number of requests in a valid input file; BatchInputError for the first problem found."""
    seen: dict[str, int] = {}
    for line in read_lines(path, endpoint):
        if line.index >= max_lines:
            raise BatchInputError(f"the input file has more than {max_lines} requests, this server's limit per "
                                  "batch (see --max-batch-lines)")
        if line.custom_id in seen:
            raise BatchInputError(f"request {line.index + 1}: custom_id {line.custom_id!r} is also request "
                                  f"{seen[line.custom_id] + 1}'s; each request needs its own")
        seen[line.custom_id] = line.index
    if not seen:
        raise BatchInputError("the input file holds no requests")
    return len(seen)


def _parse(raw: bytes, number: int, index: int, endpoint: str | None) -> BatchLine:
    where = f"line {number}"
    try:
        request = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BatchInputError(f"{where} is not JSON: {error}") from None
    if not isinstance(request, dict):
        raise BatchInputError(f"{where} is not a JSON object")
    custom_id, method, url, body = (request.get(key) for key in ("custom_id", "method", "url", "body"))
    if not isinstance(custom_id, str) or not custom_id:
        raise BatchInputError(f"{where}: custom_id must be a non-empty string")
    if method != "POST":
        raise BatchInputError(f"{where}: method must be \"POST\", got {method!r}")
    allowed = ENDPOINTS if endpoint is None else (endpoint,)
    if url not in allowed:
        raise BatchInputError(f"{where}: url must be {' or '.join(map(repr, allowed))}, got {url!r}")
    if not isinstance(body, dict):
        raise BatchInputError(f"{where}: body must be a JSON object (the request to {url})")
    return BatchLine(index, custom_id, url, body)
