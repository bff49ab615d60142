"""What a request may ask of the sampler: vLLM's names and defaults, validated on construction."""

import math
from dataclasses import dataclass

MAX_LOGPROBS = 20

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
class SamplingParams:
    """How to sample one request's completions; every field is checked on construction (ValueError).

    top_k 0 and -1 both disable top-k. `stop` and `stop_token_ids` are normalised to lists. `logprobs` is the
    number of top logprobs returned per generated token (0: only the sampled token's). `max_tokens=None` lets the
    engine fill the rest of the context.
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
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not (is_int and accepts(value)):
        raise ValueError(f"{name} must be an integer {accepted}, got {value!r}")


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
        raise ValueError(f"stop_token_ids must be a list of integers >= 0, got {token_ids!r}")
    return list(token_ids)


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
