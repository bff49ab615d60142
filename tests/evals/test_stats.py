"""bootstrap_ci and mcnemar against hand computations."""

import math

import pytest

from vlmserve.evals.stats import bootstrap_ci, mcnemar, percentiles


def test_bootstrap_ci_contains_the_mean_and_is_deterministic():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 5  # mean 0.7
    low, high = bootstrap_ci(values)
    assert low < 0.7 < high
    assert (low, high) == bootstrap_ci(values)
    assert bootstrap_ci(values, seed=1) != (low, high)
    # the normal-approximation interval is 0.7 ± 1.96 * sqrt(0.21 / 50) = [0.573, 0.827]; the percentile one is close
    assert low == pytest.approx(0.573, abs=0.04) and high == pytest.approx(0.827, abs=0.04)


def test_bootstrap_ci_of_constant_values_is_a_point_and_empty_is_refused():
    assert bootstrap_ci([0.5] * 7) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


@pytest.mark.parametrize("b, c, p", [
    (0, 5, 0.0625),  # 2 * (1/2)^5
    (5, 0, 0.0625),
    (1, 5, 2 * 7 / 64),  # 2 * (C(6,0) + C(6,1)) / 2^6 = 0.21875
    (2, 8, 2 * 56 / 1024),  # 2 * (1 + 10 + 45) / 2^10 = 0.109375
    (3, 3, 1.0),  # 2 * P(X <= 3 | n=6) = 2 * 42/64 > 1, capped
    (0, 0, 1.0),
])
def test_mcnemar_exact(b, c, p):
    result = mcnemar(b, c)
    assert result.method == "exact binomial" and result.statistic is None
    assert result.p_value == pytest.approx(p, rel=1e-12)


def test_mcnemar_chi_square_with_continuity_correction():
    result = mcnemar(7, 18)  # 25 discordant pairs: (|7 - 18| - 1)^2 / 25 = 4
    assert result.method == "chi-square, continuity corrected"
    assert result.statistic == pytest.approx(4.0)
    # chi-square(1) > 4 is |z| > 2 for a standard normal: 2 * (1 - Phi(2)) = 0.0455002638
    assert result.p_value == pytest.approx(0.0455002638, rel=1e-8)
    assert mcnemar(20, 20).p_value == pytest.approx(math.erfc(math.sqrt(1 / 40 / 2)))  # statistic 1/40


def test_mcnemar_refuses_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar(-1, 3)


def test_percentiles():
    assert percentiles([]) is None
    assert percentiles(list(range(101))) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
