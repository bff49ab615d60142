"""What a request may ask of the sampler: vLLM's names and defaults, validated on construction."""

import json
import math
from dataclasses import dataclass

MAX_LOGPROBS = 20
# Integers reach int64 tensors (top-k, stop-token bans, generator seeds): anything outside would overflow there.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")  # exactly one is set

# name -> (accepts, what is accepted); checked after the type.
_FLOAT_RANGES = {
    "temperature": (lambda v: v >= 0, ">= 0 (0 means greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "presence_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1 means no penalty)"),
}
_INT_RANGES = {
    "n": (lambda v: v >= 1, ">= 1"),
    "top_k": (lambda v: v >= -1, ">= 1, or 0 or -1 to disable"),
    "min_tokens": (lambda v: v >= 0, ">= 0"),
}
_OPTIONAL_INT_RANGES = {
    "seed": (lambda v: True, "or None"),
    "max_tokens": (lambda v: v >= 1, ">= 1, or None"),
    "logprobs": (lambda v: 0 <= v <= MAX_LOGPROBS, f"in [0, {MAX_LOGPROBS}], or None"),
}
_FLAGS = ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens")


@dataclass
class StructuredOutputsParams:
    """Constrain a completion to a grammar (vLLM's `structured_outputs`); exactly one field is set.

    `json`: a JSON schema, as a dict or JSON text (normalised to a dict); `json_object`: any JSON object (OpenAI's
    `response_format={"type": "json_object"}`); `regex`: the whole output matches it; `choice`: the output is one of
    these strings; `grammar`: an EBNF grammar as xgrammar reads it (rule `root`); `structural_tag`: an xgrammar
    structural tag (`{"type": "structural_tag", "format": ...}`, as a dict or JSON text). JSON may have at most 20
    whitespace characters between two tokens, so a model cannot pad it with whitespace until max_tokens;
    `disable_any_whitespace` makes it compact (", " and ": " separators only).
    Whether the schema, regex or grammar compiles is checked when the request is added (ValueError), since that
    needs the tokenizer.
    """

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: dict | str | None = None
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        for name in ("json_object", "disable_any_whitespace"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"structured_outputs.{name} must be a bool, got {getattr(self, name)!r}")
        chosen = self._set_kinds()
        if len(chosen) != 1:
            raise ValueError(f"structured_outputs needs exactly one of {', '.join(STRUCTURED_OUTPUT_KINDS)}; got "
                             f"{' and '.join(chosen) if chosen else 'none'}")
        self.json = _normalised_schema(self.json)
        self.structural_tag = _normalised_structural_tag(self.structural_tag)
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string, got {value!r}")
        if self.choice is not None:
            choice = self.choice
            if not (isinstance(choice, (list, tuple)) and choice and all(isinstance(c, str) for c in choice)):
                raise ValueError(f"structured_outputs.choice must be a non-empty list of strings, got {choice!r}")
            self.choice = list(choice)

    @property
    def kind(self) -> str:
        """The name of the field that is set: one of STRUCTURED_OUTPUT_KINDS."""
        return self._set_kinds()[0]

    def _set_kinds(self) -> list[str]:
        return [name for name in STRUCTURED_OUTPUT_KINDS if getattr(self, name) not in (None, False)]


@dataclass
class SamplingParams:
    """How to sample one request's completions; every field is checked on construction (ValueError).

    top_k 0 and -1 both disable top-k. `stop` and `stop_token_ids` are normalised to lists. `logprobs` is the
    number of top logprobs returned per generated token (0: only the sampled token's). `max_tokens=None` lets the
    engine fill the rest of the context. `structured_outputs` (a StructuredOutputsParams or a dict of its fields)
    constrains the output to a JSON schema, regex, choice or grammar; a constrained completion ends with "stop" when
    its grammar is complete, or "length" if max_tokens comes first (its text is then cut short, e.g. invalid JSON).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | dict | None = None

    def __post_init__(self) -> None:
        for name, (accepts, accepted) in _FLOAT_RANGES.items():
            setattr(self, name, _checked_float(name, getattr(self, name), accepts, accepted))
        for name, (accepts, accepted) in _INT_RANGES.items():
            _check_int(name, getattr(self, name), accepts, accepted)
        for name, (accepts, accepted) in _OPTIONAL_INT_RANGES.items():
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), accepts, accepted)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self.stop = _normalised_stop(self.stop)
        self.stop_token_ids = _normalised_stop_token_ids(self.stop_token_ids)
        self.structured_outputs = _structured_outputs(self.structured_outputs)

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax: temperature 0 or top_k 1."""
        return self.temperature == 0 or self.top_k == 1


def _checked_float(name: str, value, accepts, accepted: str) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and accepts(value)):
        raise ValueError(f"{name} must be a finite number {accepted}, got {value!r}")
    return float(value)


def _check_int(name: str, value, accepts, accepted: str) -> None:
    if not (_is_int64(value) and accepts(value)):
        raise ValueError(f"{name} must be a 64-bit integer {accepted}, got {value!r}")


def _is_int64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX


def _normalised_stop(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a non-empty string or a list of non-empty strings, got {stop!r}")
    return list(stop)


def _normalised_stop_token_ids(token_ids) -> list[int]:
    if token_ids is None:
        return []
    if not isinstance(token_ids, (list, tuple)) or not all(map(_is_token_id, token_ids)):
        raise ValueError(f"stop_token_ids must be a list of 64-bit integers >= 0, got {token_ids!r}")
    return list(token_ids)


def _is_token_id(value) -> bool:
    return _is_int64(value) and value >= 0


def _normalised_schema(schema) -> dict | None:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"structured_outputs.json is not valid JSON text: {exc}") from exc
    if schema is not None and not isinstance(schema, dict):
        raise ValueError(f"structured_outputs.json must be a JSON schema object (dict or JSON text), got {schema!r}")
    return schema


def _normalised_structural_tag(tag: dict | str | None) -> str | None:
    """The tag as JSON text (xgrammar reads it so); its format is checked when it compiles."""
    if tag is None:
        return None
    if isinstance(tag, str):
        try:
            tag = json.loads(tag)
        except json.JSONDecodeError as error:
            raise ValueError(f"structured_outputs.structural_tag is not valid JSON: {error}") from None
    if not (isinstance(tag, dict) and tag.get("type") == "structural_tag" and "format" in tag):
        raise ValueError('structured_outputs.structural_tag must be {"type": "structural_tag", "format": ...}')
    return json.dumps(tag, ensure_ascii=False)


def _structured_outputs(value) -> StructuredOutputsParams | None:
    if value is None or isinstance(value, StructuredOutputsParams):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"structured_outputs must be a StructuredOutputsParams or a dict, got {value!r}")
    accepted = (*STRUCTURED_OUTPUT_KINDS, "disable_any_whitespace")
    unknown = sorted(set(value) - set(accepted))
    if unknown:
        raise ValueError(f"structured_outputs has unknown field(s) {unknown}; accepted: {', '.join(accepted)}")
    return StructuredOutputsParams(**value)
