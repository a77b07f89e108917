"""Plots of `gradbench report`, drawn from the runs' metrics.csv and summary.json alone.

<column>.png (or .pdf, .svg: gradbench.present.figstyle) for each evaluated metric (train_loss,
val_accuracy, ...), against step and against training time: each seed thin, the group's mean
bold, drawn only over the steps every finished seed of the group reaches (a mean over the
seeds still running would jump where one stops: survivor bias), so the legend says where the
mean ends. Dotted means diverged or failed, nothing else: such runs are drawn dotted up to
their last finite value with a ✕; a group with nothing to draw stays in the legend, marked.
Groups differ in colour, line style and marker (markers staggered along the curve, so groups
whose curves coincide stay visible; the legend says "identical to …" where their means are
equal), and are labelled in the words of gradbench.present.names. confusion.png: a k × k matrix with
its values in the cells, a colour bar, and the group's name.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from gradbench.present import names
from gradbench.columns import describe, drawn, split_of
from gradbench.present.figstyle import DOTTED, PALETTE, Look, integer_steps, legend, plain_log_ticks, wrap
from gradbench.present.plots import HUGE
from gradbench.present.report_runs import BAD

STYLES = ("-", "--", "-.")  # not ":": dotted is reserved for diverged and failed runs
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MARKS = 8  # markers along each mean curve
POINTS = 2000  # buckets per drawn curve, about a panel's pixels across: more points add time and memory, not detail
SAME = 1e-4  # relative difference at every step below which two mean curves are "identical": float32
# rounding (hand-derived backprop vs autograd differ by ~1e-6), far below what a figure resolves


def style(i: int) -> dict:
    """Group i's colour, line style and marker: the seven palette colours, the style changing
    with each round of seven, the marker with every group; 7 × 3 and 8 markers are coprime, so
    no two of 168 groups look alike."""
    n = len(PALETTE)
    return {"color": PALETTE[i % n], "linestyle": STYLES[(i // n) % len(STYLES)], "marker": MARKERS[i % len(MARKERS)]}


def curve_columns(frames: list[pd.DataFrame]) -> list[str]:
    """The evaluated metrics (`drawn`) present in any run; errors only where accuracy is absent."""
    columns = list(dict.fromkeys(c for f in frames for c in f.columns if drawn(c) and f[c].notna().any()))
    return [c for c in columns if not (c.endswith("_errors") and c.replace("_errors", "_accuracy") in columns)]


def finite(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Step, training time and `column` where `column` is a drawable number (no rows for a run
    without it). In numpy, not by pandas masks: a report of 2 000 runs calls it 12 000 times."""
    if column not in frame:
        return pd.DataFrame(columns=["step", "train_time_s", column], dtype=float)
    values = frame[column].to_numpy(float)
    keep = np.isfinite(values) & (np.abs(values) < HUGE)
    return pd.DataFrame({x: frame[x].to_numpy(float)[keep] for x in ("step", "train_time_s")} | {column: values[keep]})


def envelope(values: np.ndarray) -> np.ndarray:
    """Indices of the points of a long curve worth drawing: within each of POINTS runs of
    consecutive points its lowest and highest (what a pixel column shows), and the first and
    last point; every index of a curve of at most 2·POINTS points. A 10⁶-row metrics.csv draws
    4 000 points a curve, its spikes kept."""
    n = len(values)
    if n <= 2 * POINTS:
        return np.arange(n)
    size = -(-n // POINTS)
    whole = n // size * size
    blocks = np.nan_to_num(values[:whole].reshape(-1, size), nan=0.0)
    starts = np.arange(0, whole, size)
    return np.unique(np.concatenate([starts + blocks.argmin(1), starts + blocks.argmax(1), np.arange(whole, n), [0, n - 1]]))


def common_mean(rows: list[pd.DataFrame], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean train time, mean value) over the steps every run reaches: the union of their
    evaluation steps up to the earliest last step, each run interpolated linearly. `rows`:
    each run's finite rows of `column` (finite)."""
    end = min(r["step"].max() for r in rows)
    grid = np.unique(np.concatenate([r.loc[r["step"] <= end, "step"].to_numpy(float) for r in rows]))
    interp = lambda r, y: np.interp(grid, r["step"].to_numpy(float), r[y].to_numpy(float))  # noqa: E731
    return (grid, np.mean([interp(r, "train_time_s") for r in rows], 0),
            np.mean([interp(r, column) for r in rows], 0))


def plot_overlays(groups: dict[str, list[tuple[pd.DataFrame, str]]], out: Path, look: Look = Look()) -> list[Path]:
    """<column>.<format> per evaluated metric; `groups`: label → [(curve, stop reason)] per run."""
    written = []
    with look.rc():
        for column, fig in draw_overlays(groups, look).items():
            written += look.save(fig, Path(out) / column)
    return written


def axis_label(column: str) -> str:
    """`train_loss` → "training loss"."""
    return f"{names.SPLITS.get(split_of(column), split_of(column))} {describe(column).axis()}"


def draw_overlays(groups: dict[str, list[tuple[pd.DataFrame, str]]], look: Look = Look()) -> dict[str, plt.Figure]:
    """The overlay figures by column (plot_overlays saves them)."""
    figures = {}
    thin, bold = plt.rcParams["lines.linewidth"] * 0.5, plt.rcParams["lines.linewidth"] * 1.5
    for column in curve_columns([f for runs in groups.values() for f, _ in runs]):
        # each run's drawable rows, found once: 2 000 runs × the helpers below add up
        curves = {name: [(finite(f, column), stop) for f, stop in runs] for name, runs in groups.items()}
        fig, axes = plt.subplots(1, 2, figsize=look.size((12.5, 4.8)), sharey=True, layout="constrained")
        handles, positive, ends, means = [], True, [], {}
        for i, (name, runs) in enumerate(curves.items()):
            look_i = style(i)
            line = {"color": look_i["color"], "linestyle": look_i["linestyle"]}
            ok = [rows for rows, stop in runs if stop not in BAD and len(rows)]
            for rows, stop in runs:  # each seed thin; a diverged or failed one dotted, ✕ at its end
                if not len(rows):
                    continue
                failed = stop in BAD
                positive &= bool((rows[column] > 0).all())
                rows = rows.iloc[envelope(rows[column].to_numpy(float))]
                for ax, x in zip(axes, ("step", "train_time_s")):
                    ax.plot(rows[x], rows[column], color=line["color"], linestyle=DOTTED if failed else line["linestyle"],
                            lw=thin * 1.3 if failed else thin, alpha=0.7 if failed else 0.35)
                    if failed:
                        ends.append((ax, rows[x].iloc[-1], rows[column].iloc[-1], line["color"]))
            if ok:
                means[name] = common_mean(ok, column)
                drawn_points = envelope(means[name][2])
                steps, time, mean = (a[drawn_points] for a in means[name])
                # MARKS markers evenly along the curve (fractions of the axes' diagonal), each group's
                # shifted by its share of one spacing: on coinciding means both groups' markers show
                every = (i / (len(groups) * MARKS), 1 / MARKS)
                for ax, x in zip(axes, (steps, time)):
                    ax.plot(x, mean, lw=bold, marker=look_i["marker"], markevery=every, ms=plt.rcParams["lines.markersize"] * 0.6,
                            **line)
            text = legend_text(name, runs, ok, column, identical(name, means))
            handles.append(Line2D([], [], lw=bold if ok else thin, marker=look_i["marker"] if ok else "x", **line, label=text))
        for ax, xlabel in zip(axes, ("step", "training time (s)")):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        integer_steps(axes[0])
        info = describe(column)
        axes[0].set_ylabel(axis_label(column))
        log = info.log and positive
        if log:
            axes[0].set_yscale("log")
        keep_to_finished(axes[0], curves, column, log)
        plain_log_ticks(axes[0])
        low, high = axes[0].get_ylim()
        for ax, x, y, color in ends:  # a diverged run's last value, on the edge when beyond it
            ax.plot([x], [min(max(y, low), high)], "x", color=color, ms=6, clip_on=False)
        legend(fig, axes[1], look, handles, long=True)
        if look.titles:
            fig.suptitle(wrap([f"{axis_label(column).capitalize()}: bold = mean over the seeds",
                               "(only where every finished seed still runs),", "thin = each seed,",
                               "dotted ✕ = diverged or failed"], look.chars(), sep=" "), fontsize="medium")
        figures[column] = fig
    return figures


def identical(name: str, means: dict[str, tuple]) -> str | None:
    """The first earlier group whose mean curve equals this group's (same steps, values within
    a relative SAME), so the legend can say why only one of them shows."""
    if name not in means:
        return None
    steps, _, mean = means[name]
    for other, (o_steps, _, o_mean) in means.items():
        if other == name:
            return None
        if len(o_steps) == len(steps) and np.array_equal(o_steps, steps) and \
                np.allclose(o_mean, mean, rtol=SAME, atol=0):
            return other
    return None


def keep_to_finished(ax, curves: dict, column: str, log: bool) -> None:
    """The y range of the finished runs (and the diverged runs' starts), so a run that diverged
    to 1e30 does not flatten every other curve; its line leaves the plot, its ✕ sits on the edge.
    `curves`: group → [(the run's finite rows of `column`, stop reason)]."""
    values = np.concatenate([f[column].to_numpy(float) for runs in curves.values()
                             for f, stop in runs if stop not in BAD] +
                            [f[column].to_numpy(float)[:1] for runs in curves.values() for f, _ in runs]
                            + [np.array([])])
    if not len(values):
        return
    low, high = values.min(), values.max()
    if log:  # 5 % of the decades spanned on either side (a short range is not padded to ×1.5)
        pad = 10 ** max(0.05 * np.log10(high / low), 0.005)
        ax.set_ylim(low / pad, high * pad)
    else:
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        ax.set_ylim(low - pad, high + pad)


def legend_text(name: str, runs: list[tuple[pd.DataFrame, str]], ok: list[pd.DataFrame], column: str,
                same_as: str | None = None) -> str:
    """`name (3 seeds)`, plus where the mean ends when seeds stop at different steps, the runs
    that diverged or failed (and `not drawn` when nothing of the group could be), and the
    group whose mean it equals. `runs`: (finite rows of `column`, stop reason) per run; `ok`:
    the finished ones' rows."""
    parts = [f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"]
    if ok:
        ends = [f["step"].max() for f in ok]
        if len(set(ends)) > 1:
            parts.append(f"mean to step {min(ends):g}, {sum(e > min(ends) for e in ends)} go on")
    stops = Counter(stop for _, stop in runs if stop in BAD)
    parts += [f"{k} {stop}" for stop, k in stops.items()]
    if not ok and not any(len(f) for f, _ in runs):
        parts.append("not drawn")
    if same_as:
        parts.append(f"identical to {textwrap.shorten(same_as, 40, placeholder='…')}")
    return textwrap.shorten(name, 70, placeholder="…") + f" ({', '.join(parts)})"


def plot_confusion(matrix: np.ndarray, title: str, stem: Path, classes: list[str] | None = None,
                   look: Look = Look(), unit: str = "test examples") -> list[Path]:
    """A confusion matrix (draw_confusion); stem.<format> for each of the look's formats."""
    with look.rc():
        return look.save(draw_confusion(matrix, title, classes, look, unit), stem)


def draw_confusion(matrix: np.ndarray, title: str, classes: list[str] | None = None, look: Look = Look(),
                   unit: str = "test examples") -> plt.Figure:
    """A confusion matrix (rows true class, columns predicted, labelled by `classes`) with each
    cell's value written in it, a colour bar saying what the shades count (`unit`), and `title`
    (the group's display name and what ran) above it where the look has titles."""
    k = len(matrix)
    classes = classes or [str(i) for i in range(k)]
    tilt = max(map(len, classes)) > 3
    side = max(3.5, 1.2 + 0.6 * k)
    fig, ax = plt.subplots(figsize=look.size((side + 0.8, max(3.5, 1.0 + 0.6 * k)), panels=1), layout="constrained")
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    integral = np.allclose(matrix, np.round(matrix))
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.0f}" if integral else f"{v:.1f}", ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black", fontsize="small")
    ax.set_xticks(range(k), classes, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label=unit, shrink=0.9)
    if look.titles:
        ax.set_title("\n".join(wrap(line.split(" · "), 45) for line in title.splitlines()), fontsize="small")
    return fig
