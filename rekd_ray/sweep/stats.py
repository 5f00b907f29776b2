"""Mean and 95 % interval over seeds; differences against a baseline.

Student-t intervals, since a sweep has a handful of seeds per setting:

* one setting, values x_1..x_n: mean +- t_{0.975, n-1} * s / sqrt(n), with s
  the sample standard deviation (n - 1 in the denominator);
* a difference of two settings a - b: Welch's interval, mean_a - mean_b +-
  t_{0.975, df} * sqrt(s_a^2 / n_a + s_b^2 / n_b), with the
  Welch-Satterthwaite df.

With fewer than two values (or a zero spread on both sides) there is no
interval: ``low`` and ``high`` are NaN and only the mean is meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = ["Interval", "difference_interval", "mean_interval"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided interval (NaN when undefined)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def defined(self) -> bool:
        return not math.isnan(self.low)


def _check(values: Sequence[float], name: str) -> list[float]:
    values = [float(value) for value in values]
    if not values:
        raise ValueError(f"{name}: needs at least one value, got none")
    return values


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval of ``values``.

    Raises:
        ValueError: ``values`` is empty or ``confidence`` is not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    values = _check(values, "values")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    variance = sum((value - mean) ** 2 for value in values) / (n - 1)
    t = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1))
    half = t * math.sqrt(variance / n)
    return Interval(mean, mean - half, mean + half, n)


def difference_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Interval:
    """``mean(a) - mean(b)`` with Welch's t-interval; ``n`` is ``min(n_a, n_b)``."""
    a, b = _check(a, "a"), _check(b, "b")
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    diff = mean_a - mean_b
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan, min(len(a), len(b)))
    var_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1) / len(a)
    var_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        return Interval(diff, diff, diff, min(len(a), len(b)))
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * se
    return Interval(diff, diff - half, diff + half, min(len(a), len(b)))
