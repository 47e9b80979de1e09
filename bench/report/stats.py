"""Statistics over seeds: mean, sample standard deviation and Welch's unequal-variance t-test
(scipy's, which scikit-learn already requires), plus the number formatting shared by all tables."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from bench.metrics import decimals

ALPHA = 0.05  # significance level of the two-sided Welch test (no multiple-comparison correction)


@dataclass(frozen=True)
class Welch:
    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float]) -> Optional[Welch]:
    """Two-sided Welch t-test of mean(a) != mean(b); None when it is undefined (fewer than 2 values
    in a group, or no variance in either)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return None
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Welch(float(result.statistic), float(df), float(result.pvalue))


def p_cell(a: Sequence[float], b: Sequence[float]) -> str:
    """The p-value cell of a comparison: ``0.012 *`` (significant), ``0.4``, or why there is none."""
    n = min(len(a), len(b))
    if n < 2:
        return f"{n} seed{'' if n == 1 else 's'}: no test"
    result = welch(a, b)
    if result is None:
        return "no variance: no test"
    star = " *" if result.p < ALPHA else ""
    return f"{result.p:.3g}{star}"


def fmt(value: float, unit: str, digits: Optional[int] = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    d = decimals(value, unit) if digits is None else digits
    return f"{value:,.{d}f}"


def mean_std(values: Sequence[float], unit: str, digits: Optional[int] = None) -> str:
    """``mean ± sample std`` over seeds (just the value for one seed); ``digits`` after the point
    (default: by the mean's magnitude; tables pass one count per column)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    d = decimals(float(v.mean()), unit) if digits is None else digits
    if len(v) == 1:
        return fmt(float(v[0]), unit, d)
    return f"{fmt(float(v.mean()), unit, d)} ± {fmt(float(v.std(ddof=1)), unit, d)}"


def signed(value: float, unit: str) -> str:
    text = fmt(value, unit)
    return text if text.startswith("-") or text == "n/a" else f"+{text}"
