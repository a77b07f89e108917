"""Paired statistics against a baseline group, for `gradbench report --baseline KEY=VALUE ...`.

Runs of one seed share initial weights, data split and batch order whatever their estimator
(separate generators per stream: conf/config.yaml `seed`), so a group's run and the baseline's
run of the same seed are a pair. Per metric and group: over the seeds both have (finished runs
only), the mean of the per-seed differences d_s = x_s − b_s and of the ratios r_s = x_s / b_s,
each with its 95 % Student-t interval t_{0.975,n−1}·sd/√n (gradbench.present.report_runs.mean_ci,
the same t as the per-group cells). "tied" means the difference's interval holds 0. Pairing
removes the between-seed spread the two groups share, so a paired interval is usually far
narrower than the two groups' own intervals side by side (which stay in table.md).

Writes paired.csv (every metric) and returns paired.md's text (the headline metrics).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gradbench.present.report_cells import fmt
from gradbench.present.report_runs import Run, mean_ci

# metrics paired.md shows where present (paired.csv has every metric)
HEADLINE = ("test_accuracy", "test_error_rate", "val_accuracy", "best_val_accuracy", "steps_to_target",
            "time_to_target_s", "mean_step_time_s", "train_time_s")
NOTE = ("paired against the baseline on the seeds both have (finished runs): Δ = mean of the per-seed "
        "differences (group − baseline) ± 95% CI (Student t over the pairs), × = mean per-seed ratio "
        "group / baseline ± its 95% CI; **tied**: the Δ interval holds 0; n = pairs (a seed where either run has no "
        "value, e.g. a target not reached, is left out); blank: no pair")


def parse_baseline(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` items → {key: value}; a malformed item raises ValueError naming it."""
    wanted = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("+~")
        if not eq or not key:
            raise ValueError(f"--baseline {item!r}: must be KEY=VALUE, e.g. --baseline estimator=backward")
        wanted[key] = value.strip()
    return wanted


def _equal(ours, theirs: str) -> bool:
    """A run's value against a --baseline value: as numbers when both are, else as lower-case text."""
    if ours is None:
        return False
    try:
        return math.isclose(float(ours), float(theirs), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(ours).strip().lower() == theirs.strip().lower()


def find_baseline(first: dict[str, Run], wanted: dict[str, str]) -> str:
    """The one group whose runs have every wanted value (an override, group choice or config key);
    ValueError when none or several match (several: add a key, e.g. model.local_losses=false)."""
    hits = [g for g, run in first.items() if all(_equal(run.lookup(k), v) for k, v in wanted.items())]
    said = " ".join(f"{k}={v}" for k, v in wanted.items())
    if not hits:
        raise ValueError(f"--baseline {said}: matches no group (groups: {'; '.join(first)})")
    if len(hits) > 1:
        raise ValueError(f"--baseline {said}: matches {len(hits)} groups ({'; '.join(hits)}); "
                         "add a KEY=VALUE that tells them apart")
    return hits[0]


def paired(frame: pd.DataFrame, baseline: str, metrics: list[str]) -> pd.DataFrame:
    """One row per (group, metric) other than the baseline: n pairs, Δ and its CI, ratio and its
    CI, tied. `frame` is report_runs.runs_frame's (one row per run: group, seed, ok, metrics)."""
    ok = frame[frame["ok"]].assign(seed=frame["seed"].astype(str))
    base = ok[ok["group"] == baseline].drop_duplicates("seed").set_index("seed")
    rows = []
    for group, runs in ok.groupby("group", sort=False):
        if group == baseline:
            continue
        runs = runs.drop_duplicates("seed").set_index("seed")
        seeds = [s for s in runs.index if s in base.index]
        for metric in metrics:
            x = runs.loc[seeds, metric].astype(float) if seeds else pd.Series(dtype=float)
            b = base.loc[seeds, metric].astype(float) if seeds else pd.Series(dtype=float)
            keep = x.notna() & b.notna()
            diff, diff_ci, n = mean_ci((x - b)[keep])
            nonzero = keep & (b != 0)
            ratio, ratio_ci, _ = mean_ci((x / b)[nonzero]) if nonzero.any() else (math.nan, math.nan, 0)
            tied = bool(n >= 2 and math.isfinite(diff_ci) and diff - diff_ci <= 0 <= diff + diff_ci) or \
                (n >= 1 and diff == 0)
            rows.append({"group": group, "baseline": baseline, "metric": metric, "n": n, "diff": diff,
                         "diff_ci": diff_ci, "diff_lo": diff - diff_ci, "diff_hi": diff + diff_ci,
                         "ratio": ratio, "ratio_ci": ratio_ci, "tied": tied})
    return pd.DataFrame(rows, columns=["group", "baseline", "metric", "n", "diff", "diff_ci", "diff_lo",
                                       "diff_hi", "ratio", "ratio_ci", "tied"])


def _pm(mean: float, ci: float) -> str:
    if not math.isfinite(mean):
        return ""
    return fmt(mean) + (f" ± {fmt(ci, 2)}" if math.isfinite(ci) else "")


def markdown(table: pd.DataFrame, baseline: str, names: dict[str, str] | None = None) -> str:
    """paired.md: one line per group, per headline metric `Δ (×ratio)` and "tied" where it is."""
    names = names or {}
    metrics = [m for m in HEADLINE if m in set(table["metric"])]
    lines = [f"## Paired against {names.get(baseline, baseline)}", "",
             "| group | n | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for group, part in table.groupby("group", sort=False):
        part = part.set_index("metric")
        cells = []
        for m in metrics:
            r = part.loc[m]
            text = f"Δ {_pm(r['diff'], r['diff_ci'])}" if math.isfinite(r["diff"]) else ""
            text += f" (× {_pm(r['ratio'], r['ratio_ci'])})" if math.isfinite(r["ratio"]) else ""
            cells.append(text + (" **tied**" if r["tied"] else ""))
        n = int(part["n"].max()) if len(part) else 0
        lines.append("| " + " | ".join([names.get(group, group), str(n), *cells]).replace("\n", " ") + " |")
    return "\n".join(lines) + f"\n\n{NOTE}.\n"


def write(frame: pd.DataFrame, baseline: str, metrics: list[str], out: Path,
          names: dict[str, str] | None = None) -> str:
    """paired.csv and paired.md under out; returns the markdown."""
    table = paired(frame, baseline, metrics)
    table.to_csv(out / "paired.csv", index=False)
    text = markdown(table, baseline, names) if len(table) else f"## Paired against {baseline}\n\nno other group.\n"
    (out / "paired.md").write_text(text)
    return text
