"""Price tables: the defaults from the model page, a pricing file per served model, usage.cost from it."""

import json

import pytest

from tests.server.helpers import MODEL
from vlmserve.server.pricing import Price, PriceTable, load_pricing


def test_default_prices_match_the_model_page_examples():
    price = Price()
    assert price.cost(1_000_000, 100_000, 0) == pytest.approx(0.39)  # "1M input + 100K output: $0.39"
    assert price.cost(0, 0, 100) == pytest.approx(0.05058)  # "100 images: $0.05"
    assert price.cost(2000, 500, 0) == pytest.approx(0.0009)  # "2K input, 500 output: $0.0009"


def test_pricing_file_per_model_with_fallback(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        MODEL: {"input_per_1m_tokens": 1, "output_per_1m_tokens": 2, "per_image": 0.5},
        "*": {"input_per_1m_tokens": 0, "output_per_1m_tokens": 0, "per_image": 0},
    }))
    table = load_pricing(path)
    assert table.price(MODEL) == Price(1.0, 2.0, 0.5)
    assert table.price("other").cost(10**6, 10**6, 3) == 0


@pytest.mark.parametrize("content, complaint", [
    ("{", "cannot read"),
    ("[]", "JSON object"),
    ('{"m": {"input_per_1m_tokens": 1}}', "exactly the fields"),
    ('{"m": {"input_per_1m_tokens": -1, "output_per_1m_tokens": 1, "per_image": 0}}', "input_per_1m_tokens"),
])
def test_malformed_pricing_files_are_refused(tmp_path, content, complaint):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=complaint):
        load_pricing(path)


def test_usage_cost_follows_a_custom_price_table(serve):
    table = PriceTable(by_model={MODEL: Price(input_per_1m_tokens=10, output_per_1m_tokens=20, per_image=0)})

    async def run(client):
        return (await client.post("/v1/completions", json={
            "model": MODEL, "prompt": [128000, 9906], "max_tokens": 3, "ignore_eos": True})).json()

    usage = serve(run, pricing=table)["usage"]
    assert usage["prompt_tokens"] == 2 and usage["completion_tokens"] == 3
    assert usage["cost"] == pytest.approx((2 * 10 + 3 * 20) / 1e6)
