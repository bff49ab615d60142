"""Field types for request bodies, so that what the OpenAPI document promises is what validation enforces.

- Text: any string of Unicode scalar values. JSON can spell a lone UTF-16 surrogate ("\\ud800"), which Python
  decodes into a str that no tokenizer or grammar compiler can encode; it is refused where it stands.
- JSON objects (schemas, metadata) are checked the same way, keys and values, all the way down.
- Integers are JSON Schema integers: 3 and 3.0 both (a JSON number whose fraction is zero), never "3"; those
  that reach int64 tensors are bounded to int64.
"""

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from vlmserve.sampling_params import INT64_MAX, INT64_MIN

# Exclusive bounds, so that the OpenAPI document's float rendering (2**63 is exact in a double, 2**63 - 1 is not)
# states the int64 range exactly.
INT64_END = INT64_MAX + 1

_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_MESSAGE = "holds a lone UTF-16 surrogate (such as \\ud800), which is not text; send valid Unicode"


def _no_surrogates(text: str) -> str:
    if _SURROGATE.search(text):
        raise ValueError(SURROGATE_MESSAGE)
    return text


def _json_without_surrogates(value: Any) -> Any:
    """The value itself; raises if any string inside it, key or value, holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _no_surrogates(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_whole_number)]
Text = Annotated[str, AfterValidator(_no_surrogates)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_no_surrogates)]
JSONObject = Annotated[dict[str, Any], AfterValidator(_json_without_surrogates)]
Int64 = Annotated[Integer, Field(ge=INT64_MIN, lt=INT64_END)]
TokenId = Annotated[Integer, Field(ge=0, lt=INT64_END)]
PositiveInt64 = Annotated[Integer, Field(ge=1, lt=INT64_END)]
Count = Annotated[Integer, Field(ge=0, lt=INT64_END)]
