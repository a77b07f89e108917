"""Plots of one run, drawn from its files alone (metrics.csv, .hydra/, summary.json's initial
evaluation), so any run can be re-plotted later:

    python -m gradbench.present.plots outputs/runs/<date>/<time> [--style paper --width column --format pdf]

One <figure>.png per figure of gradbench.columns that the CSV has values for (loss, accuracy,
error rate, the test functions' gap and distance, the diagnostics of `diagnose=true`): the
metric against step and against training time, step 0 = the initial evaluation, one colour per
split (figstyle.SPLIT_COLOURS) in every file, log scale where the column says so, and a title
saying what ran in the words of gradbench.present.names. A diverged run is marked: the y range stops
short of the blow-up, a ✕ and "diverged at step N" where it happened.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gradbench.present import names
from gradbench.run.checkpoint import NEUTRAL
from gradbench.columns import SPLITS, describe, split_of, with_rates
from gradbench.present.figstyle import SPLIT_COLOURS, Look, add_arguments, integer_steps, legend, look_of, mark_diverged, \
    plain_log_ticks, wrap
from gradbench.run import files
from gradbench.run.metrics import read_metrics, with_initial
from gradbench.present.report_runs import hydra_choices
from gradbench.paths import GROUPS

HUGE = 1e30  # a diverging run's values beyond this are clipped to it (drawing 1e285 overflows)
BLOWUP = 1e3  # a diverged run's log axes stop at this many times its first value: the rest is the blow-up


def run_title(run_dir: Path, summary: dict | None = None) -> list[str]:
    """What ran, as display names (gradbench.present.names): data, model, the method (L-BP, not
    "backprop · local losses"), optimizer and its learning rate (overridden or not), the other
    overrides (no seed, no result-neutral keys), the seed; from the run's .hydra/ files."""
    hydra_dir = Path(run_dir) / ".hydra"
    config = files.read_yaml(hydra_dir / "config.yaml", opaque=True) if files.exists(hydra_dir / "config.yaml") else {}
    config = config if isinstance(config, dict) else {}
    choices = hydra_choices(run_dir)
    overrides = [o.lstrip("+~") for o in files.read_overrides(hydra_dir / "overrides.yaml", opaque=True)] \
        if files.exists(hydra_dir / "overrides.yaml") else []
    key = lambda o: o.partition("=")[0]  # noqa: E731
    rest = {key(o): o.partition("=")[2] for o in overrides
            if key(o) not in (*GROUPS, "seed", *names.MODEL_KEYS) and key(o).split(".")[0] not in NEUTRAL
            and not key(o).startswith("hydra")}
    resolved = (summary or {}).get("config") or config
    named = names.method({"estimator": choices.get("estimator"), **rest}, resolved) if "estimator" in choices else None
    head = []
    for group in GROUPS:
        if group not in choices or (group, choices[group]) in (("schedule", "constant"), ("dataset", "none")):
            continue
        head.append(names.model_name(config, choices[group], summary) if group == "model"
                    else named[0] if group == "estimator" and named else names.option(group, choices[group]))
        lr = names.lookup(resolved, "optimizer.lr")
        if group == "optimizer" and "optimizer.lr" not in rest and isinstance(lr, (int, float)):
            head.append(names.setting("optimizer.lr", f"{lr:g}"))  # the default rate, said all the same
    parts = head or [Path(run_dir).name]
    parts += [names.setting(k, v) for k, v in rest.items() if not (named and k in named[1])]
    return parts + ([f"seed {config['seed']}"] if config.get("seed") is not None else [])


def figures(frame: pd.DataFrame) -> dict[str, list[str]]:
    """figure name → the frame's columns drawn in it (in CSV order: batch_loss before the splits)."""
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


def diverged_at(frame: pd.DataFrame, summary: dict | None) -> int | None:
    """The step a run diverged at: summary.json's `diverged_at_step` where it has one; else the
    first step with a non-finite loss in the CSV (the batch loss is written every step, so an
    empty one is a NaN; a split's loss counts where the split was evaluated), which also serves
    run plots drawn before the summary exists; else, when the summary says `diverged` (parameters
    that went non-finite after a finite loss), the last step; None for a healthy run."""
    summary = summary or {}
    if "diverged_at_step" in summary:
        return summary["diverged_at_step"]
    steps = frame[frame["step"] > 0]  # not the initial evaluation
    bad = pd.Series(False, index=steps.index)
    if "batch_loss" in steps:
        bad |= ~np.isfinite(steps["batch_loss"].astype(float))
    for split in SPLITS:
        loss, other = f"{split}_loss", [c for c in steps if split_of(c) == split and c != f"{split}_loss"]
        if loss in steps:
            evaluated = steps[other].notna().any(axis=1) if other else steps[loss].notna()
            bad |= evaluated & ~np.isfinite(steps[loss].astype(float))
    if bad.any():
        return int(steps.loc[bad, "step"].iloc[0])
    return int(frame["step"].max()) if summary.get("stop_reason") == "diverged" and len(frame) else None


def plot_run(run_dir: Path, initial: dict | None = None, look: Look = Look()) -> list[Path]:
    """Write <figure>.<format> for each figure the run's metrics.csv has values for; `initial`
    (the evaluation before the first step) defaults to summary.json's."""
    written = []
    with look.rc():
        for figure, fig in draw_run(run_dir, initial, look).items():
            written += look.save(fig, Path(run_dir) / figure)
    return written


def draw_run(run_dir: Path, initial: dict | None = None, look: Look = Look()) -> dict[str, plt.Figure]:
    """The run's figures, by name (plot_run saves them)."""
    run_dir = Path(run_dir)
    summary = files.read_summary(run_dir / "summary.json") if files.exists(run_dir / "summary.json") else None
    if initial is None and summary:
        initial = summary.get("initial")
    raw = with_initial(read_metrics(run_dir / "metrics.csv"), initial)
    diverged = diverged_at(raw, summary)
    frame = with_rates(raw)
    numbers = frame.select_dtypes("number")
    frame[numbers.columns] = numbers.where(np.isfinite(numbers)).clip(-HUGE, HUGE)
    title = wrap(run_title(run_dir, summary), look.chars())
    drawn = {}
    for figure, columns in figures(frame).items():
        fig, axes = plt.subplots(1, 2, figsize=look.size((11, 4.4)), sharey=True, layout="constrained")
        width, size = plt.rcParams["lines.linewidth"], plt.rcParams["lines.markersize"]
        for i, column in enumerate(columns):
            split = split_of(column)
            rows = frame[frame[column].notna()]
            batch = split == "batch"
            name = "batch (each step)" if batch else names.SPLITS.get(split) or describe(column).label
            for ax, x in zip(axes, ("step", "train_time_s")):
                ax.plot(rows[x], rows[column], label=name, color=SPLIT_COLOURS.get(split, f"C{i}"),
                        lw=width * (0.55 if batch else 1), alpha=0.6 if batch else 1.0,
                        marker="o" if len(rows) <= 12 and not batch else None, ms=size / 2)
        column = describe(columns[-1])  # the evaluations' column (the batch loss sorts first)
        for ax, xlabel in zip(axes, ("step", "training time (s)")):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        integer_steps(axes[0])
        axes[0].set_ylabel(column.axis())
        if column.log and (frame[columns].min(numeric_only=True) > 0).all():
            axes[0].set_yscale("log")
            if diverged is not None:
                stop_before_blowup(axes[0], frame[columns])
        plain_log_ticks(axes[0])
        upto = frame[frame["step"] <= (diverged if diverged is not None else -1)]
        drawn_values = upto.dropna(subset=columns, how="all")
        if len(drawn_values):  # diverged: a ✕ at its step, at the last value drawn (beyond the top: on the edge)
            y, time = drawn_values[columns].iloc[-1].max(), upto["train_time_s"].dropna().iloc[-1]
            for ax, x in zip(axes, (diverged, time)):
                mark_diverged(ax, x, y, diverged, note=ax is axes[0])
        legend(fig, axes[1], look)
        if look.titles:
            fig.suptitle(f"{column.label[0].upper()}{column.label[1:]}\n{title}", fontsize="medium")
        drawn[figure] = fig
    return drawn


def stop_before_blowup(ax, values: pd.DataFrame) -> None:
    """A diverged run's y range: its values up to BLOWUP times the first one, so the curve before
    the blow-up stays readable (1e31 would flatten it); the ✕ sits on the top edge."""
    flat = values.stack().to_numpy(float)
    flat = flat[np.isfinite(flat) & (flat > 0)]
    if not len(flat):
        return
    first = values.bfill().iloc[0].dropna()
    cap = (first.max() if len(first) else flat[0]) * BLOWUP
    kept = flat[flat <= cap]
    ax.set_ylim(kept.min() / 1.3, min(flat.max(), cap) * 1.3)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m gradbench.present.plots RUN_DIR [RUN_DIR ...] [--style paper] [--width column|page] "
              "[--format pdf ...]  (redraws a run's plots from its metrics.csv)", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m gradbench.present.plots", description="Redraw run plots from "
                                     "their metrics.csv, summary.json and .hydra/.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    add_arguments(parser)
    args = parser.parse_args(argv)
    for run in args.runs:
        print("\n".join(str(p) for p in plot_run(run, look=look_of(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
