"""Plots of one run, drawn from its files alone (metrics.csv, .hydra/, summary.json's initial
evaluation), so any run can be re-plotted later:

    python -m gradbench.plots outputs/runs/<date>/<time>

One <figure>.png per figure of gradbench.columns that the CSV has values for (loss, accuracy,
errors, the test functions' gap and distance, the diagnostics of `diagnose=true`): the
metric against step and against train time, step 0 = the initial evaluation, one colour per
split (columns.SPLIT_COLOURS) in every file, log scale where the column says so, and a title
saying what ran.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from gradbench.checkpoint import NEUTRAL  # noqa: E402
from gradbench.report_runs import hydra_choices  # noqa: E402
from gradbench.validate import GROUPS  # noqa: E402
from gradbench.columns import SPLIT_COLOURS, describe, split_of  # noqa: E402
from gradbench.metrics import read_metrics, with_initial  # noqa: E402

HUGE = 1e30  # a diverging run's values beyond this are clipped to it (drawing 1e285 overflows)


def run_title(run_dir: Path) -> str:
    """What ran: the group choices, the other overrides (no seed, no result-neutral keys), the
    seed; from the run's .hydra/ files (empty where they are missing)."""
    hydra_dir = Path(run_dir) / ".hydra"
    read = lambda name: yaml.safe_load((hydra_dir / name).read_text()) if (hydra_dir / name).is_file() else None  # noqa: E731
    choices = hydra_choices(run_dir)
    overrides = [str(o) for o in read("overrides.yaml") or []]
    seed = (read("config.yaml") or {}).get("seed")
    keys = lambda o: o.lstrip("+~").partition("=")[0]  # noqa: E731
    rest = [o.lstrip("+") for o in overrides if keys(o) not in (*GROUPS, "seed") and keys(o).split(".")[0] not in NEUTRAL
            and not keys(o).startswith("hydra")]
    head = " · ".join(f"{choices[g]}" for g in GROUPS if g in choices and not (g == "schedule" and choices[g] == "constant"))
    parts = [head or Path(run_dir).name, *rest] + ([f"seed {seed}"] if seed is not None else [])
    return "\n".join(textwrap.wrap(" | ".join(parts), 110))


def figures(frame: pd.DataFrame) -> dict[str, list[str]]:
    """figure name → the CSV's columns drawn in it (in CSV order: batch_loss before the splits)."""
    found: dict[str, list[str]] = {}
    for column in frame.columns:
        try:
            figure = describe(column).figure
        except KeyError:  # a column gradbench does not know: kept in the CSV, not drawn
            continue
        if figure and frame[column].notna().any():
            found.setdefault(figure, []).append(column)
    # the batch loss first, drawn behind the evaluations
    return {figure: sorted(columns, key=lambda c: split_of(c) != "batch") for figure, columns in found.items()}


def plot_run(run_dir: Path, initial: dict | None = None) -> list[Path]:
    """Write <figure>.png for each figure the run's metrics.csv has values for; `initial` (the
    evaluation before the first step) defaults to summary.json's."""
    written = []
    for figure, fig in draw_run(run_dir, initial).items():
        path = Path(run_dir) / f"{figure}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def draw_run(run_dir: Path, initial: dict | None = None) -> dict[str, plt.Figure]:
    """The run's figures, by name (plot_run saves them)."""
    run_dir = Path(run_dir)
    if initial is None and (run_dir / "summary.json").is_file():
        initial = json.loads((run_dir / "summary.json").read_text()).get("initial")
    frame = with_initial(read_metrics(run_dir / "metrics.csv"), initial)
    numbers = frame.select_dtypes("number")
    frame[numbers.columns] = numbers.where(np.isfinite(numbers)).clip(-HUGE, HUGE)
    title = run_title(run_dir)
    drawn = {}
    for figure, columns in figures(frame).items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
        for i, column in enumerate(columns):
            split = split_of(column)
            rows = frame[frame[column].notna()]
            batch = split == "batch"
            for ax, x in zip(axes, ("step", "train_time_s")):
                ax.plot(rows[x], rows[column], label="batch (each step)" if batch else split or column,
                        color=SPLIT_COLOURS.get(split, f"C{i}"), lw=1.0 if batch else 1.8, alpha=0.6 if batch else 1.0,
                        marker="o" if len(rows) <= 12 and not batch else None, ms=3)
        column = describe(columns[-1])  # the evaluations' column (the batch loss sorts first)
        for ax, xlabel in zip(axes, ("step", "train time (s)")):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(column.axis())
        if column.log and (frame[columns].min(numeric_only=True) > 0).all():
            axes[0].set_yscale("log")
        axes[1].legend(loc="best", fontsize="small")
        fig.suptitle(f"{column.label}\n{title}", fontsize="medium")
        fig.tight_layout()
        drawn[figure] = fig
    return drawn


if __name__ == "__main__":
    if not sys.argv[1:]:
        print("usage: python -m gradbench.plots RUN_DIR [RUN_DIR ...]  (redraws a run's plots from its metrics.csv)",
              file=sys.stderr)
        sys.exit(2)
    for arg in sys.argv[1:]:
        print("\n".join(str(p) for p in plot_run(Path(arg))))
