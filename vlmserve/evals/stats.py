"""Statistics for comparing endpoints: bootstrap confidence intervals and McNemar's paired test.

Plain functions on plain numbers, so the report's uncertainty figures can be checked by hand. The bootstrap
uses a fixed seed: the same records always give the same interval.
"""

import math
from dataclasses import dataclass

import numpy as np

# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
EXACT_BELOW = 25


def bootstrap_ci(values, confidence: float = 0.95, num_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of `values`: resample items with replacement
    `num_resamples` times and take the (1-confidence)/2 and (1+confidence)/2 quantiles of the means."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples)
    chunk = max(1, 4_000_000 // data.size)  # bound the [resamples, n] index matrix to ~32 MB
    for start in range(0, num_resamples, chunk):
        stop = min(start + chunk, num_resamples)
        means[start:stop] = data[rng.integers(0, data.size, (stop - start, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class McNemarResult:
    """b: items only the first endpoint got right; c: only the second. p_value is two-sided."""
    b: int
    c: int
    statistic: float | None  # the chi-square statistic; None for the exact test
    p_value: float
    method: str  # "exact binomial" or "chi-square, continuity corrected"


def mcnemar(b: int, c: int) -> McNemarResult:
    """McNemar's test on the discordant pairs of a paired 2x2 table. Under the null hypothesis each discordant
    item is equally likely to favour either endpoint, so b ~ Binomial(b + c, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
        return McNemarResult(b, c, None, min(1.0, 2 * tail), "exact binomial")
    statistic = (abs(b - c) - 1) ** 2 / n
    # survival function of chi-square with one degree of freedom
    return McNemarResult(b, c, statistic, math.erfc(math.sqrt(statistic / 2)), "chi-square, continuity corrected")


def percentiles(values, qs=(50, 90, 99)) -> dict[str, float] | None:
    """{"p50": …, "p90": …, "p99": …} by linear interpolation; None when there are no values."""
    if len(values) == 0:
        return None
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(np.asarray(values, dtype=np.float64), qs))}
