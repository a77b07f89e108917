"""Every number gradbench writes or tabulates, in one place: what it is, its unit, which way is
better, whether it is drawn and on what scale. The CSV writer (metrics.csv's columns), the
models (their `metric_names`), the run plots, the report's tables and `--select`, and the
report plots all read it, so a new metric is one line here.

A column is either a run-level name (`batch_loss`, `grad_cosine`, `steps_to_target`, ...) or
`<split>_<metric>`: a metric of METRICS evaluated on one split (`val_accuracy`), or the best of
it over the run (`best_val_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")
# One colour per split in every plot (matplotlib's tab10 blue, orange, green); `batch` is the
# loss of each step's batch, drawn faint behind the evaluations.
SPLIT_COLOURS = {"batch": "#9e9e9e", "train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


@dataclass(frozen=True)
class Column:
    label: str                 # axis and table label
    better: str | None = None  # "min" | "max" | None (neither: a coordinate, a counter, a setting)
    unit: str = ""
    log: bool = False          # drawn on a log scale (when every value is positive)
    figure: str | None = None  # the run plot it is drawn in (<figure>.png); None: not drawn

    def axis(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


# Metrics a model evaluates on a whole split (Model.metric_names), as `<split>_<name>`.
METRICS = {
    "loss": Column("loss", "min", log=True, figure="loss"),
    "accuracy": Column("accuracy", "max", figure="accuracy"),
    "errors": Column("misclassified examples", "min", figure="errors"),
    "gap": Column("f − f*", "min", log=True, figure="gap"),  # test functions (models/functions.py)
    "distance": Column("‖θ − θ*‖", "min", log=True, figure="distance"),
    "x1": Column("x₁"),  # a test function's position: drawn by `gradbench functions`
    "x2": Column("x₂"),
}

# Run-level columns: metrics.csv's per-step columns, the diagnostics, the report's derived numbers.
RUN = {
    "step": Column("step"),
    "epoch": Column("epoch"),
    "batch_loss": Column("loss on the step's batch", "min", log=True, figure="loss"),
    "lr": Column("learning rate", log=True),
    "step_time_s": Column("step time", "min", "s"),
    "train_time_s": Column("train time", "min", "s"),
    "wall_time_s": Column("wall time", "min", "s"),
    "grad_cosine": Column("cosine(estimate, true gradient)", "max", figure="grad_cosine"),
    "grad_rel_error": Column("‖estimate − ∇L‖ / ‖∇L‖", "min", log=True, figure="grad_rel_error"),
    "steps": Column("steps"),
    "steps_to_target": Column("steps to target", "min"),
    "time_to_target_s": Column("train time to target", "min", "s"),
    "mean_step_time_s": Column("mean step time", "min", "s"),
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
