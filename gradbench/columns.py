"""Every number gradbench writes or tabulates, in one place: what it is, its unit, which way is
better, the range its values lie in, whether it is drawn and on what scale. The CSV writer (metrics.csv's columns), the
models (their `metric_names`), the run plots, the report's tables and `--select`, and the
report plots all read it, so a new metric is one line here.

A column is either a run-level name (`batch_loss`, `grad_cosine`, `steps_to_target`, ...) or
`<split>_<metric>`: a metric of METRICS evaluated on one split (`val_accuracy`), or the best of
it over the run (`best_val_loss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

SPLITS = ("train", "val", "test")
POSITIVE = (0.0, math.inf)  # losses (cross-entropy, ‖out‖², f ≥ f* = 0), counts, steps, times
UNIT = (0.0, 1.0)           # accuracies and error rates


@dataclass(frozen=True)
class Column:
    label: str                 # axis and table label
    better: str | None = None  # "min" | "max" | None (neither: a coordinate, a counter, a setting)
    unit: str = ""
    log: bool = False          # drawn on a log scale (when every value is positive)
    figure: str | None = None  # the run plot it is drawn in (<figure>.png); None: not drawn
    bounds: tuple[float, float] | None = None  # the range every value lies in: CIs are clipped to it

    def axis(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


# Metrics a model evaluates on a whole split (Model.metric_names), as `<split>_<name>`.
METRICS = {
    "loss": Column("loss", "min", log=True, figure="loss", bounds=POSITIVE),
    "accuracy": Column("accuracy", "max", figure="accuracy", bounds=UNIT),
    "errors": Column("misclassified examples", "min", bounds=POSITIVE),  # counts; the plots draw rates
    # errors / split size (= 1 − accuracy), so splits of 204 and 69 examples compare (with_rates)
    "error_rate": Column("error rate", "min", figure="errors", bounds=UNIT),
    "gap": Column("f − f*", "min", log=True, figure="gap", bounds=POSITIVE),  # test functions (models/functions.py)
    "distance": Column("‖θ − θ*‖", "min", log=True, figure="distance", bounds=POSITIVE),
    "x1": Column("$x_1$"),  # a test function's position: drawn by `gradbench functions`
    "x2": Column("$x_2$"),
}

# Run-level columns: metrics.csv's per-step columns, the diagnostics, the report's derived numbers.
RUN = {
    "step": Column("step"),
    "epoch": Column("epoch"),
    "batch_loss": Column("loss on the step's batch", "min", log=True, figure="loss", bounds=POSITIVE),
    "lr": Column("learning rate", log=True),
    "step_time_s": Column("step time", "min", "s", bounds=POSITIVE),
    "train_time_s": Column("training time", "min", "s", bounds=POSITIVE),
    "wall_time_s": Column("wall time", "min", "s"),
    "grad_cosine": Column("cosine(estimate, true gradient)", "max", figure="grad_cosine", bounds=(-1.0, 1.0)),
    "grad_rel_error": Column("‖estimate − ∇L‖ / ‖∇L‖", "min", log=True, figure="grad_rel_error", bounds=POSITIVE),
    "steps": Column("steps", bounds=POSITIVE),
    "steps_to_target": Column("steps to target", "min", bounds=POSITIVE),
    "time_to_target_s": Column("training time to target", "min", "s", bounds=POSITIVE),
    "mean_step_time_s": Column("mean step time", "min", "s", bounds=POSITIVE),
    # what one step costs in passes over the batch (summary.json's `passes`, Estimator.passes)
    "passes_forward": Column("forward evaluations per step", bounds=POSITIVE),
    "passes_forward_mode": Column("forward-mode passes per step", bounds=POSITIVE),
    "passes_backward": Column("backward passes per step", bounds=POSITIVE),
}

# metrics.csv's first columns, written every step
STEP_COLUMNS = ["step", "epoch", "batch_loss", "lr", "step_time_s", "train_time_s", "wall_time_s"]


def split_of(column: str) -> str | None:
    """`val_loss` → val, `best_val_loss` → val, `batch_loss` → batch, `grad_cosine` → None."""
    if column == "batch_loss":
        return "batch"
    split, _, metric = column.removeprefix("best_").partition("_")
    return split if split in SPLITS and metric in METRICS else None


def describe(column: str) -> Column:
    """The Column of a name; KeyError naming the known ones for anything else."""
    if column in RUN:
        return RUN[column]
    if split_of(column) not in (None, "batch"):
        return METRICS[column.removeprefix("best_").partition("_")[2]]
    raise KeyError(f"{column!r} is not a gradbench column (run columns: {', '.join(RUN)}; "
                   f"<split>_<metric> with split {' | '.join(SPLITS)}, metric {' | '.join(METRICS)})")


def better(column: str) -> str | None:
    """min, max or None; None for a name that is no gradbench column."""
    try:
        return describe(column).better
    except KeyError:
        return None


def eval_columns(splits: list[str], metric_names: tuple[str, ...]) -> list[str]:
    """metrics.csv's evaluation columns: every metric on every evaluated split."""
    return [f"{split}_{metric}" for split in splits for metric in metric_names]


def with_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with `<split>_error_rate` beside each split's errors: errors / split size, which
    is 1 − accuracy (accuracy = correct / size), as metrics.csv has no split sizes."""
    rates = {f"{s}_error_rate": 1 - frame[f"{s}_accuracy"] for s in SPLITS
             if f"{s}_errors" in frame and f"{s}_accuracy" in frame}
    return frame.assign(**rates)


def drawn(column: str) -> bool:
    """A metrics.csv column the report's figures draw: an evaluated metric (<split>_<metric>,
    not the batch's) whose description gives it a figure."""
    return split_of(column) not in (None, "batch") and describe(column).figure
