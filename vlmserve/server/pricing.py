"""What a request costs in USD: a price per million input and output tokens and per image, per served model.

The defaults are the hosted Llama 3.2 90B Vision prices (shared/reference/model-page-api-and-pricing.txt).
A pricing file is JSON mapping a served model name (or "*" for any other) to its three prices:

    {"llama-3.2-11b-vision": {"input_per_1m_tokens": 0.055, "output_per_1m_tokens": 0.055, "per_image": 0.0},
     "*": {"input_per_1m_tokens": 0.35, "output_per_1m_tokens": 0.40, "per_image": 0.0005058}}
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

PRICE_FIELDS = ("input_per_1m_tokens", "output_per_1m_tokens", "per_image")
ANY_MODEL = "*"


@dataclass(frozen=True)
class Price:
    input_per_1m_tokens: float = 0.35
    output_per_1m_tokens: float = 0.40
    per_image: float = 0.0005058

    def cost(self, prompt_tokens: int, completion_tokens: int, num_images: int) -> float:
        usd = (prompt_tokens * self.input_per_1m_tokens + completion_tokens * self.output_per_1m_tokens) / 1e6
        return round(usd + num_images * self.per_image, 12)  # drop float noise below a nano-cent


@dataclass(frozen=True)
class PriceTable:
    """Prices by served model name; models not listed pay `default`."""

    by_model: dict[str, Price] = field(default_factory=dict)
    default: Price = field(default_factory=Price)

    def price(self, model: str) -> Price:
        return self.by_model.get(model, self.default)


def load_pricing(path: str | Path) -> PriceTable:
    """Read a pricing file; ValueError naming the entry and field when it is malformed."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read pricing file {path}: {error}") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"pricing file {path} must hold a JSON object mapping model names (or '*') to prices")
    prices = {name: _price(entry, f"{path}: {name!r}") for name, entry in table.items()}
    default = prices.pop(ANY_MODEL, Price())
    return PriceTable(by_model=prices, default=default)


def _price(entry, where: str) -> Price:
    if not isinstance(entry, dict) or set(entry) != set(PRICE_FIELDS):
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{where} must have exactly the fields {', '.join(PRICE_FIELDS)}; got {got}")
    for name, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{where}: {name} must be a number >= 0 (USD), got {value!r}")
    return Price(**{name: float(value) for name, value in entry.items()})
