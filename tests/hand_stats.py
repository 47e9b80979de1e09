"""Statistics written out by hand for the tests, independent of scipy: Student's t CDF by
numerical integration, the two-sided paired t-test and Holm's step-down correction."""
from __future__ import annotations

import math

import numpy as np


def t_cdf(t: float, df: float) -> float:
    """Student's t CDF by numerical integration of its density."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    x = np.linspace(0.0, abs(t), 400001)
    density = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    area = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))
    return 0.5 + math.copysign(area, t)


def paired_p(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t-test of mean difference 0."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return 2 * (1 - t_cdf(abs(mean / (sd / math.sqrt(n))), n - 1))


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment: sort, multiply by (m - rank), running maximum."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted
