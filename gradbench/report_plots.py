"""Plots of `gradbench report`, drawn from the runs' metrics.csv and summary.json alone.

<column>.png for each evaluated metric (train_loss, val_accuracy, ...), against step and
against train time: each seed thin, the group's mean bold, drawn only over the steps every
finished seed of the group reaches (a mean over the seeds still running would jump where one
stops: survivor bias), so the legend says where the mean ends. Diverged and failed runs are
drawn dotted up to their last finite value; a group with nothing to draw stays in the legend,
marked. Groups differ in colour and line style (ten colours, four styles), and are labelled
by the keys that vary. confusion.png: a k × k matrix with its values in the cells.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from gradbench.columns import describe, split_of  # noqa: E402
from gradbench.plots import HUGE  # noqa: E402
from gradbench.report_runs import BAD  # noqa: E402

STYLES = ("-", "--", "-.", ":")


def style(i: int) -> dict:
    """Group i's colour and line style: tab10's ten colours, the style changing with each colour
    and each round of ten, so no two of forty groups look alike and equal curves stay visible."""
    return {"color": plt.cm.tab10(i % 10), "linestyle": STYLES[(i + i // 10) % len(STYLES)]}


def curve_columns(frames: list[pd.DataFrame]) -> list[str]:
    """The evaluated metrics (<split>_<metric>, drawn per gradbench.columns) present in any run;
    errors only where accuracy is absent."""
    columns = list(dict.fromkeys(c for f in frames for c in f.columns
                                 if split_of(c) not in (None, "batch") and describe(c).figure and f[c].notna().any()))
    return [c for c in columns if not (c.endswith("_errors") and c.replace("_errors", "_accuracy") in columns)]


def finite(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows where `column` is a drawable number (none for a run without the column)."""
    if column not in frame:
        return pd.DataFrame(columns=["step", "train_time_s", column], dtype=float)
    values = frame[column].astype(float)
    return frame[values.notna() & np.isfinite(values) & (values.abs() < HUGE)]


def common_mean(frames: list[pd.DataFrame], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean train time, mean value) over the steps every run reaches: the union of their
    evaluation steps up to the earliest last step, each run interpolated linearly."""
    rows = [finite(f, column) for f in frames]
    end = min(r["step"].max() for r in rows)
    grid = np.unique(np.concatenate([r.loc[r["step"] <= end, "step"].to_numpy(float) for r in rows]))
    interp = lambda r, y: np.interp(grid, r["step"].to_numpy(float), r[y].to_numpy(float))  # noqa: E731
    return (grid, np.mean([interp(r, "train_time_s") for r in rows], 0),
            np.mean([interp(r, column) for r in rows], 0))


def plot_overlays(groups: dict[str, list[tuple[pd.DataFrame, str]]], out: Path) -> list[Path]:
    """<column>.png per evaluated metric; `groups`: label → [(curve, stop reason)] per run."""
    written = []
    for column, fig in draw_overlays(groups).items():
        path = Path(out) / f"{column}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def draw_overlays(groups: dict[str, list[tuple[pd.DataFrame, str]]]) -> dict[str, plt.Figure]:
    """The overlay figures by column (plot_overlays saves them)."""
    drawn = {}
    for column in curve_columns([f for runs in groups.values() for f, _ in runs]):
        fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), sharey=True)
        handles, positive, ends = [], True, []
        for i, (name, runs) in enumerate(groups.items()):
            look = style(i)
            ok = [f for f, stop in runs if stop not in BAD and len(finite(f, column))]
            for frame, stop in runs:  # each seed thin; a diverged or failed one dotted, ✕ at its end
                rows = finite(frame, column)
                if not len(rows):
                    continue
                failed = stop in BAD
                positive &= bool((rows[column] > 0).all())
                for ax, x in zip(axes, ("step", "train_time_s")):
                    ax.plot(rows[x], rows[column], color=look["color"], linestyle=":" if failed else look["linestyle"],
                            lw=0.9 if failed else 0.7, alpha=0.6 if failed else 0.35)
                    if failed:
                        ends.append((ax, rows[x].iloc[-1], rows[column].iloc[-1], look["color"]))
            text = legend_text(name, runs, ok, column)
            if ok:
                steps, time, mean = common_mean(ok, column)
                for ax, x in zip(axes, (steps, time)):
                    ax.plot(x, mean, lw=2.2, **look)
            handles.append(Line2D([], [], lw=2.2 if ok else 1.0, marker=None if ok else "x", **look, label=text))
        for ax, xlabel in zip(axes, ("step", "train time (s), mean over seeds")):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        info = describe(column)
        axes[0].set_ylabel(f"{split_of(column)} {info.axis()}")
        log = info.log and positive
        if log:
            axes[0].set_yscale("log")
        keep_to_finished(axes[0], groups, column, log)
        low, high = axes[0].get_ylim()
        for ax, x, y, color in ends:  # a diverged run's last value, on the edge when beyond it
            ax.plot([x], [min(max(y, low), high)], "x", color=color, ms=6, clip_on=False)
        axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
        fig.suptitle(f"{column}: bold = mean over the seeds (only where every finished seed still runs), "
                     f"thin = each seed, dotted ✕ = diverged or failed", fontsize="medium")
        fig.tight_layout()
        drawn[column] = fig
    return drawn


def keep_to_finished(ax, groups: dict, column: str, log: bool) -> None:
    """The y range of the finished runs (and the diverged runs' starts), so a run that diverged
    to 1e30 does not flatten every other curve; its line leaves the plot, its ✕ sits on the edge."""
    values = np.concatenate([finite(f, column)[column].to_numpy(float) for runs in groups.values()
                             for f, stop in runs if stop not in BAD] +
                            [finite(f, column)[column].to_numpy(float)[:1] for runs in groups.values() for f, _ in runs]
                            + [np.array([])])
    if not len(values):
        return
    low, high = values.min(), values.max()
    if log:
        ax.set_ylim(low / 1.5, high * 1.5)
    else:
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        ax.set_ylim(low - pad, high + pad)


def legend_text(name: str, runs: list[tuple[pd.DataFrame, str]], ok: list[pd.DataFrame], column: str) -> str:
    """`name (n=3)`, plus where the mean ends when seeds stop at different steps, plus the runs
    that diverged or failed (and `not drawn` when nothing of the group could be)."""
    parts = [f"n={len(runs)}"]
    if ok:
        ends = [finite(f, column)["step"].max() for f in ok]
        if len(set(ends)) > 1:
            parts.append(f"mean to step {min(ends):g}, {sum(e > min(ends) for e in ends)} seed(s) go on")
    stops = Counter(stop for _, stop in runs if stop in BAD)
    parts += [f"{k} {stop}" for stop, k in stops.items()]
    if not ok and not any(len(finite(f, column)) for f, _ in runs):
        parts.append("not drawn")
    return textwrap.shorten(name, 70, placeholder="…") + f" ({', '.join(parts)})"


def plot_confusion(matrix: np.ndarray, title: str, path: Path, names: list[str] | None = None) -> Path:
    """A confusion matrix (rows true class, columns predicted, labelled by `names`) with each
    cell's value written in it."""
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(max(3.5, 1.2 + 0.6 * k), max(3.5, 1.0 + 0.6 * k)))
    ax.imshow(matrix, cmap="Blues")
    integral = np.allclose(matrix, np.round(matrix))
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.0f}" if integral else f"{v:.1f}", ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black", fontsize="small")
    names = names or [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right" if max(map(len, names)) > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("\n".join(textwrap.fill(line, 45) for line in title.splitlines()), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
