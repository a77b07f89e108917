"""The report's cells and its best group: mean ± 95% CI, the interval clipped to a metric's range
(shown as [lo, hi] where the t-interval would leave it), and which groups tie with the best.

Why clipped t-intervals and not a bootstrap: with 3–5 seeds a percentile bootstrap has only a
handful of distinct resamples and is too narrow; the t-interval is the honest width, and
clipping it to the range (accuracy ≤ 1, a step count ≥ 0) only removes values no run can take.
"""

from __future__ import annotations

import math

import pandas as pd

from gradbench.columns import better, describe

CI_NOTE = ("cells: mean ± 95% CI over seeds (Student t: t·s/√n; the mean alone for one run or equal values), "
           "or mean [lo, hi] where that interval would leave the metric's range (accuracies [0, 1]; losses, "
           "counts, steps, times ≥ 0), clipped to it; failed, diverged and interrupted runs are counted in "
           "`failed` and left out of the means")
TIE_RULE = ("rule: the 95% intervals overlap; a group with one run, or with equal runs, has its value as "
            "interval, so it ties only when equal")


def fmt(x, digits: int = 4) -> str:
    if isinstance(x, str):
        return x
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"


def bounds(metric: str) -> tuple[float, float]:
    """The range every value of the metric lies in (gradbench.columns; unbounded if unknown)."""
    try:
        return describe(metric).bounds or (-math.inf, math.inf)
    except KeyError:
        return -math.inf, math.inf


def interval(row: pd.Series, metric: str) -> tuple[float, float]:
    """The 95% interval mean ± t·s/√n clipped to the metric's range: a t-interval of 5 seeds'
    accuracies near 1 reaches past 1, and no seed can; (mean, mean) without a CI."""
    mean, ci = row.get(metric, math.nan), row.get(f"{metric}_ci", math.nan)
    if not (isinstance(ci, float) and math.isfinite(ci)):
        return mean, mean
    low, high = bounds(metric)
    return max(mean - ci, low), min(mean + ci, high)


def cell(row: pd.Series, metric: str) -> str:
    """`mean ± ci`, or `mean [lo, hi]` where the interval was clipped to the metric's range (the
    mean alone for one run or identical runs); the stop reason where no run of the group finished."""
    if row["ok"] == 0:
        return row["status"]
    mean, ci = row.get(metric, math.nan), row.get(f"{metric}_ci", math.nan)
    if not (math.isfinite(ci) and ci > 0):
        return fmt(mean)
    low, high = interval(row, metric)
    if (low, high) != (mean - ci, mean + ci):
        return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"
    return f"{fmt(mean)} ± {fmt(ci, 2)}"


def maximise(metric: str) -> bool:
    return better(metric) == "max"  # gradbench.columns: each column's direction


def candidates(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The groups that may be best: with a value, and without a failed run unless no group is complete."""
    rows = table[table[metric].notna()]
    return rows[rows["failed"] == 0] if (rows["failed"] == 0).any() else rows


def best_row(table: pd.DataFrame, metric: str):
    """Index of the best group by the metric's mean (None if no group has a value)."""
    rows = candidates(table, metric)
    if rows.empty:
        return None
    return rows[metric].idxmax() if maximise(metric) else rows[metric].idxmin()


def ties(table: pd.DataFrame, metric: str, best) -> list:
    """Indices of the other candidate groups tied with the best one (TIE_RULE): their clipped
    95% intervals overlap, or, without CIs, their means are exactly equal."""
    low, high = interval(table.loc[best], metric)
    return [i for i, row in candidates(table, metric).iterrows()
            if i != best and interval(row, metric)[0] <= high and low <= interval(row, metric)[1]]
