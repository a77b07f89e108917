"""Plots of one run, drawn from its metrics.csv alone (so any run can be re-plotted later).

    python -m gradbench.plots outputs/runs/<date>/<time>
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gradbench.metrics import read_metrics  # noqa: E402

METRICS = {"loss": "loss", "accuracy": "accuracy", "errors": "misclassifications"}
HUGE = 1e30  # a diverging run's values beyond this are clipped to it (drawing 1e285 overflows)


def plot_run(run_dir: Path) -> list[Path]:
    """Write <metric>.png (against step and against train time) for each metric in the CSV."""
    run_dir = Path(run_dir)
    frame = read_metrics(run_dir / "metrics.csv")
    numbers = frame.select_dtypes("number")
    frame[numbers.columns] = numbers.where(np.isfinite(numbers)).clip(-HUGE, HUGE)
    written = []
    for metric, label in METRICS.items():
        # batch_loss ends in _loss too: it comes first, drawn faint behind the evaluations
        columns = [c for c in frame.columns if c.endswith(f"_{metric}") and frame[c].notna().any()]
        if not columns:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, x, xlabel in zip(axes, ("step", "train_time_s"), ("step", "train time (s)")):
            for column in columns:
                rows = frame[frame[column].notna()]
                ax.plot(rows[x], rows[column], label=column, lw=1.2 if column == "batch_loss" else 1.8,
                        alpha=0.5 if column == "batch_loss" else 1.0)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(label)
        axes[1].legend(loc="best", fontsize="small")
        if metric == "loss" and (frame[columns].min(numeric_only=True) > 0).all():
            axes[0].set_yscale("log")
        fig.suptitle(f"{label}: {run_dir.name}")
        fig.tight_layout()
        path = run_dir / f"{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    if not sys.argv[1:]:
        print("usage: python -m gradbench.plots RUN_DIR [RUN_DIR ...]  (redraws a run's plots from its metrics.csv)",
              file=sys.stderr)
        sys.exit(2)
    for arg in sys.argv[1:]:
        print("\n".join(str(p) for p in plot_run(Path(arg))))
