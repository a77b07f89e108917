"""Plots of `gradbench report`, drawn from the runs' metrics.csv and summary.json alone.

<column>.png for each evaluated metric (train_loss, val_accuracy, ...): one line per group = the
mean over its seeds, a band = min..max over its seeds, against step (the runs interpolated on
the union of their eval steps) and against train time (the group's mean train_time_s at each of
those steps). confusion.png: a k × k matrix with its values written in the cells.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gradbench.metrics import STEP_COLUMNS  # noqa: E402

SPLITS = ("train", "val", "test")


def curve_columns(frames: list[pd.DataFrame]) -> list[str]:
    """The evaluated metrics (split_metric) present in any run; errors only where accuracy is absent."""
    columns = list(dict.fromkeys(c for f in frames for c in f.columns
                                 if c.split("_")[0] in SPLITS and c not in STEP_COLUMNS and f[c].notna().any()))
    return [c for c in columns if not (c.endswith("_errors") and c.replace("_errors", "_accuracy") in columns)]


def band(frames: list[pd.DataFrame], column: str) -> tuple[np.ndarray, ...]:
    """(steps, mean train time, mean, min, max) over the runs of one group, on the union of their
    eval steps; each run interpolated linearly, NaN outside its own range of steps."""
    runs = [f for f in frames if column in f and f[column].notna().any()]
    if not runs:
        return (np.array([]),) * 5
    grid = np.unique(np.concatenate([f.loc[f[column].notna(), "step"].to_numpy(float) for f in runs]))

    def on_grid(x: pd.Series, y: pd.Series) -> np.ndarray:
        keep = y.notna()
        return np.interp(grid, x[keep].to_numpy(float), y[keep].to_numpy(float), left=np.nan, right=np.nan)

    values = np.vstack([on_grid(f["step"], f[column]) for f in runs])
    times = np.vstack([on_grid(f["step"], f["train_time_s"]) for f in runs])
    with warnings.catch_warnings():  # a grid step only some runs reach: the mean of those
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(times, 0), np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


def plot_overlays(groups: dict[str, list[pd.DataFrame]], out: Path) -> list[Path]:
    """<column>.png per evaluated metric: every group's mean and min..max band, vs step and vs time."""
    columns = curve_columns([f for frames in groups.values() for f in frames])
    written = []
    for column in columns:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        positive = True
        for i, (name, frames) in enumerate(groups.items()):
            steps, time, mean, low, high = band(frames, column)
            if not len(steps):
                continue
            color = plt.cm.tab10(i % 10) if len(groups) <= 10 else plt.cm.tab20(i % 20)
            positive &= bool(np.nanmin(low) > 0)
            for ax, x in zip(axes, (steps, time)):
                ax.plot(x, mean, color=color, lw=1.6, label=f"{name} (n={len(frames)})")
                if len(frames) > 1:
                    ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
        for ax, xlabel in zip(axes, ("step", "train time (s), group mean")):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(column)
        if column.endswith("_loss") and positive:
            axes[0].set_yscale("log")
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
        fig.suptitle(f"{column}: mean over seeds, band = min..max over seeds")
        fig.tight_layout()
        path = Path(out) / f"{column}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion(matrix: np.ndarray, title: str, path: Path) -> Path:
    """A confusion matrix (rows true class, columns predicted) with each cell's value written in it."""
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(max(3.5, 1.2 + 0.6 * k), max(3.5, 1.0 + 0.6 * k)))
    ax.imshow(matrix, cmap="Blues")
    integral = np.allclose(matrix, np.round(matrix))
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.0f}" if integral else f"{v:.1f}", ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black", fontsize="small")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("\n".join(textwrap.fill(line, 45) for line in title.splitlines()), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
