"""`gradbench bench-report DIR [--x KEY] [--threads] [--out OUT]`: every bench.csv under DIR as
one table, and scaling curves or the thread-count table.

    gradbench bench -m +benchmark=scaling_depth hydra.sweep.dir=outputs/bench/depth
    gradbench bench-report outputs/bench/depth --x layers

Writes OUT/bench.md (all rows, grouped by the run they came from) and, with `--x`, OUT/scaling_<x>.png:
median step time (band: the interquartile range's width about the median) and peak memory per
step against `x` (batch_size, num_params or layers), one line per estimator, log-log, a caption
line under the panels saying the model, data, batch and band in every style. A pure function of the
bench.csv files, so any set of bench runs can be re-plotted later. `--threads` (after `make
threads`: each workload timed at several thread counts, `bench.load` 0 and 1) writes
OUT/threads.md: step time per thread count with and without the background process, the count
`threads=auto` picks, and its time over the best count's at each load.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullLocator

from gradbench.commands import arguments
from gradbench.present import names
from gradbench.run import files
from gradbench.commands.bench import COLUMNS, format_table
from gradbench.present.figstyle import PALETTE, Look, legend, look_of, plain_log_ticks, wrap
from gradbench.present.report_runs import hydra_choices

from gradbench.commands.arguments import AXES  # noqa: E402  (the --x choices)
# the band around each step-time line: bench.csv keeps the median and the IQR (q3 − q1), not the quartiles
BAND = "band: interquartile range of the step times (its width, centred on the median)"


def _tick(value: float, _=None) -> str:
    return f"{value:.0f}" if value < 1e4 else f"{value / 1e6:.3g}M"


def load(root: Path) -> pd.DataFrame:
    """Every bench.csv under `root`, with a `run` column (its folder relative to root) and the
    `model` and `dataset` it timed in words (from the run's .hydra/; empty without it)."""
    frames = []
    for path in sorted(root.rglob("bench.csv")):
        try:
            frame = files.read_csv(path, numbers=False)
        except ValueError as e:  # BadRunFile: a symlink, a FIFO, too large, not a CSV
            raise SystemExit(f"gradbench bench-report: error: {e}") from None
        frame.insert(0, "run", str(path.parent.relative_to(root)) or ".")
        frame["model"], frame["dataset"] = what_ran(path.parent)
        frames.append(frame)
    if not frames:
        raise SystemExit(f"gradbench bench-report: error: no bench.csv under {root}")
    frame = pd.concat(frames, ignore_index=True)
    # a bench.csv from before a column was added: that column empty, not a KeyError
    return frame.reindex(columns=["run", *COLUMNS, *(c for c in frame.columns if c not in COLUMNS and c != "run")])


def what_ran(run_dir: Path) -> tuple[str, str]:
    """(model, dataset) of a bench run in display names: ("MLP 784-1024-1024-10", "MNIST")."""
    path = run_dir / ".hydra" / "config.yaml"
    try:  # a run dir is data: read through gradbench.run.files, never resolved
        choices = hydra_choices(run_dir)
        if not files.exists(path) or "model" not in choices:
            return "", ""
        config = files.read_yaml(path, opaque=True) or {}
    except ValueError:  # a broken or planted file: the caption goes without the model
        return "", ""
    return names.model_name(config, choices["model"]), names.option("dataset", choices.get("dataset", ""))


def short_model(name: str) -> str:
    """Repeated hidden widths counted: "MLP 784-1024-1024-1024-10" → "MLP 784-1024×3-10" (more
    than two alike only, so the paper's 784-1024-1024-10 reads as the paper writes it)."""
    head, _, sizes = name.rpartition(" ")
    if not head or "-" not in sizes:
        return name
    runs = [[size, len(list(group))] for size, group in itertools.groupby(sizes.split("-"))]
    return f"{head} " + "-".join(f"{size}×{k}" if k > 2 else "-".join([size] * k) for size, k in runs)


def caption(frame: pd.DataFrame, x: str) -> list[str]:
    """What a scaling figure timed, in parts: the model(s) and data, the batch size (where it is
    not the axis), threads and device, and what the band is."""
    models = [short_model(m) for m in dict.fromkeys(frame.sort_values(x, kind="stable")["model"]) if m]
    data = [d for d in dict.fromkeys(frame["dataset"]) if d]
    parts = []
    if models:
        parts.append((models[0] if len(models) == 1 else f"{models[0]} to {models[-1].split(' ', 1)[-1]}")
                     + (f" on {', '.join(data)}" if data else ""))
    if x != "batch_size":
        parts.append("batch " + ", ".join(str(b) for b in sorted(frame["batch_size"].unique())))
    threads = ", ".join(str(t) for t in sorted(frame["threads"].unique()))
    parts.append(f"{threads} thread{'s' if threads != '1' else ''}, {frame['device'].iloc[0]}")
    parts.append(BAND)
    return parts


def markdown(frame: pd.DataFrame) -> str:
    lines = []
    for run, rows in frame.groupby("run", sort=False):
        lines += [f"### {run}", "", "```", format_table(rows[COLUMNS].to_dict("records")), "```", ""]
    return "\n".join(lines)


def threads_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per workload (the run folder above load<N>/), batch size and estimator: at each
    load, the median step time (ms) per thread count, the count auto picked there (it samples
    the idle cores), and auto's time over the best count's."""
    frame = frame.assign(workload=[str(Path(r).parent) if Path(r).name.startswith("load") else r for r in frame["run"]])
    keys = ["workload", "batch_size", "forward_flops", "estimator"]
    rows = []
    for key, part in frame.groupby(keys, sort=False):
        row = dict(zip(keys, key))
        for load, at in part.groupby("load"):
            times = at.groupby("threads")["median_step_s"].median()
            auto = int(at["auto_threads"].iloc[0])
            row.update({f"load {load}, {t} thr (ms)": v * 1e3 for t, v in times.items()})
            row[f"load {load}: auto"] = auto
            row[f"load {load}: auto / best"] = times.get(auto, float("nan")) / times.min()
        rows.append(row)
    return pd.DataFrame(rows)


def threads_markdown(table: pd.DataFrame) -> str:
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    worst = table[[c for c in table.columns if c.endswith("auto / best")]].max()
    lines += ["", "worst auto / best: " + ", ".join(f"{c.split(':')[0]} {v:.2f}" for c, v in worst.items())]
    return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, x: str, stem: Path, look: Look = Look()) -> list[Path]:
    """Step time and peak memory against `x`, one line per estimator (the median over rows that
    share estimator and x, which only happens when runs repeat a setting)."""
    with look.rc():
        return _plot(frame, x, stem, look)


MARKERS = "os^DvP*Xh<>p"  # with the palette's 8 colours: every family of the field tells apart


def _plot(frame: pd.DataFrame, x: str, stem: Path, look: Look) -> list[Path]:
    return look.save(draw(frame, x, look), stem)


def draw(frame: pd.DataFrame, x: str, look: Look = Look()) -> plt.Figure:
    """The scaling figure (plot saves it); under it, in every style, a caption line saying the
    model, the batch and the band (caption)."""
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=look.size((11, 4.2)), layout="constrained")
    for i, (estimator, rows) in enumerate(frame.groupby("estimator", sort=False)):
        rows = rows.groupby(x).median(numeric_only=True).sort_index()
        estimator = names.option("estimator", estimator)
        # past the palette's colours, the marker and dashes tell the lines apart
        style = {"marker": MARKERS[i % len(MARKERS)], "ls": "-" if i < len(PALETTE) else "--",
                 "color": PALETTE[i % len(PALETTE)]}
        line, = time_ax.plot(rows.index, rows["median_step_s"] * 1e3, label=estimator, **style)
        time_ax.fill_between(rows.index, (rows["median_step_s"] - rows["iqr_step_s"] / 2) * 1e3,
                             (rows["median_step_s"] + rows["iqr_step_s"] / 2) * 1e3,
                             color=line.get_color(), alpha=0.2)
        memory_ax.plot(rows.index, rows["peak_memory_mb"], label=estimator, **style)
    evaluation = frame.groupby(x)["eval_memory_mb"].median().dropna().sort_index()
    if len(evaluation):  # where inference's memory sits: what backprop-free methods are measured against
        memory_ax.plot(evaluation.index, evaluation, color="grey", ls="-.", lw=1.5, zorder=3,  # over a line at the same memory
                       label="forward-only evaluation")
    for ax, label in ((time_ax, "median step time (ms)"), (memory_ax, "peak memory per step (MiB)")):
        ax.set(xscale="log", yscale="log", xlabel=AXES[x], ylabel=label)
        ax.set_xticks(sorted(frame[x].unique()))
        ax.xaxis.set_major_formatter(FuncFormatter(_tick))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        plain_log_ticks(ax)  # 20 ms, not 2×10¹, where the times span under two decades
    handles = memory_ax.get_legend_handles_labels()[0]
    legend(fig, memory_ax, look, handles, long=len(handles) > 4)
    # a caption in every style (a paper figure has no title, but a bench figure must say what it
    # timed), above the panels: the legend below them takes the bottom edge
    text = wrap(caption(frame, x), int(fig.get_figwidth() * (13 if look.paper else 11)))
    if look.titles:
        text = f"Estimate + update (one step) against {AXES[x]}\n{text}"
    fig.suptitle(text, fontsize="small" if look.paper else "medium")
    return fig


def main(argv: list[str]) -> int:
    parser = arguments.bench_report()
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"DIR must be a directory, got {str(args.dir)!r}")
    out = args.out or args.dir
    out.mkdir(parents=True, exist_ok=True)
    frame = load(args.dir)
    text = markdown(frame)
    files.write_text(out / "bench.md", text)
    print(text)
    if args.x:
        if frame[args.x].nunique() < 2:
            parser.error(f"--x {args.x}: the runs under {args.dir} do not vary it (one value: {frame[args.x].iloc[0]})")
        for path in plot(frame, args.x, out / f"scaling_{args.x}", look_of(args)):
            print(f"→ {path}")
    if args.threads:
        text = threads_markdown(threads_table(frame))
        files.write_text(out / "threads.md", text)
        print(text + f"→ {out / 'threads.md'}")
    print(f"→ {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
