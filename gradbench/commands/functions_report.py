"""`gradbench functions DIR [--out OUT]`: test-function runs (gradbench.models.functions) as figures.

    gradbench train -m +experiment=test_functions hydra.sweep.dir=outputs/tf/paths
    gradbench train -m +experiment=sphere_dims hydra.sweep.dir=outputs/tf/sphere
    gradbench functions outputs/tf [--style paper --width page --format pdf]

Writes into OUT (default DIR), from the run dirs' files alone:
- functions_<model>.png for each 2-d function: the contour of f on log-spaced levels with every
  run's path (one colour per estimator; forward-gradient seeds as thin lines), and the distance
  to the minimum against step;
- sphere_dims.png and sphere_dims.md for sphere runs: steps to f < ε against the dimension n,
  mean ± 95% CI over seeds, beside the theory at lr* = 1/(2(n + 2)), k = log(f₀/ε) / −log(1 − 1/(n + 2)),
  and the least-squares slope of log steps on log n.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.utils import instantiate
from matplotlib.colors import LogNorm
from matplotlib.ticker import NullLocator

from gradbench.commands import arguments
from gradbench.present import names
from gradbench.run import files, targets
from gradbench.errors import ConfigError
from gradbench.present.figstyle import PALETTE, Look, look_of, plain_log_ticks
from gradbench.present.report_runs import Run, find_runs, mean_ci

# one colour per estimator, the same in every figure (Okabe–Ito, gradbench.present.figstyle)
COLOURS = {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(names.OPTIONS["estimator"])}


def model_of(run: Run):
    """The run's test function, rebuilt from its summary (checked in `main`: gradbench.run.targets)."""
    return instantiate(run.summary["config"]["model"])


def plot_paths(name: str, runs: list[Run], stem: Path, look: Look = Look()) -> list[Path]:
    model = model_of(runs[0])
    points = np.concatenate([r.metrics[["train_x1", "train_x2"]].dropna().to_numpy() for r in runs]
                            + [model.minimum.numpy()[None], model.start.numpy()[None]])
    low, high = points.min(0), points.max(0)
    pad = 0.15 * (high - low) + 0.1
    xs, ys = np.linspace(low[0] - pad[0], high[0] + pad[0], 300), np.linspace(low[1] - pad[1], high[1] + pad[1], 300)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1), dtype=torch.float64)
    values = model.f(grid).numpy() + 1e-12
    fig, (left, right) = plt.subplots(1, 2, figsize=look.size((12, 5)), layout="constrained")
    thin, bold = (0.6, 1.4) if look.paper else (0.8, 2)
    left.contour(xs, ys, values, levels=np.logspace(np.log10(values.min()), np.log10(values.max()), 25),
                 norm=LogNorm(), cmap="Greys", linewidths=0.6)
    seen = set()
    for run in runs:
        estimator = run.choices.get("estimator", "?")
        colour = COLOURS.get(estimator, "black")
        count = sum(r.choices.get("estimator") == estimator for r in runs)
        label = None if estimator in seen else f"{names.option('estimator', estimator)} ({count} runs)"
        seen.add(estimator)
        random = run.summary["config"]["estimator"].get("_target_", "").endswith("Forward")  # seeds differ: thin
        path_xy = run.metrics[["train_x1", "train_x2"]].dropna().to_numpy()
        path_xy = np.vstack([model.start.numpy()[None], path_xy])
        left.plot(path_xy[:, 0], path_xy[:, 1], color=colour, lw=thin if random else bold, alpha=0.7, label=label)
        curve = run.curve().dropna(subset=["train_distance"])  # evaluated steps only
        right.plot(curve["step"], curve["train_distance"], color=colour, lw=thin if random else bold, alpha=0.7,
                   label=label)
    left.plot(*model.start.numpy(), "ko", ms=4 if look.paper else 6, label="start")
    left.plot(*model.minimum.numpy(), "k*", ms=8 if look.paper else 14, label="minimum")
    left.set(xlabel="$x_1$", ylabel="$x_2$")
    left.legend(fontsize="small", frameon=True, framealpha=0.9)  # over the contour lines
    right.set(xscale="log", yscale="log", xlabel="step", ylabel="distance to the minimum ‖θ − θ*‖")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize="small")
    if look.titles:
        title = names.option("model", name)
        left.set_title(f"{title}: paths over the contour of f (log levels)")
        right.set_title(f"{title}: distance to the minimum")
        lr = runs[0].summary["config"]["optimizer"]["lr"]
        fig.suptitle(f"{title}, gradient descent, learning rate {lr:g}, float64, same start for every run")
    return look.save(fig, stem)


def sphere_table(runs: list[Run]) -> list[dict]:
    """Per dimension: steps to f < ε over the seeds (runs that reached it), and the theory."""
    rows = []
    for n in sorted({r.summary["config"]["model"]["dim"] for r in runs}):
        group = [r for r in runs if r.summary["config"]["model"]["dim"] == n]
        reached = [r.summary["steps"] for r in group if r.summary["stop_reason"] == "threshold"]
        model = model_of(group[0])
        eps, f0 = group[0].summary["config"]["stop_below"], model.f(model.start).item()
        theory = math.log(f0 / eps) / -math.log(1 - 1 / (n + 2))
        mean, ci, count = mean_ci(reached)
        rows.append({"n": n, "runs": len(group), "reached": count, "steps": mean, "ci": ci, "theory": theory})
    return rows


def plot_sphere(rows: list[dict], slope: float, stem: Path, look: Look = Look()) -> list[Path]:
    fig, ax = plt.subplots(figsize=look.size((6.5, 4.5), panels=1), layout="constrained")
    n = np.array([r["n"] for r in rows])
    ax.errorbar(n, [r["steps"] for r in rows], yerr=[np.nan_to_num(r["ci"]) for r in rows], fmt="o-",
                capsize=3, color=COLOURS["forward"], label=f"{names.option('estimator', 'forward')} (mean ± 95% CI), slope {slope:.2f}")
    ax.plot(n, [r["theory"] for r in rows], "k--", label="theory: log($f_0$/ε) / −log(1 − 1/(n+2))")
    ax.set(xscale="log", yscale="log", xlabel="dimension n", ylabel="steps to f < ε")
    if look.titles:
        ax.set_title("Sphere f = ‖x‖², lr* = 1/(2(n+2)): steps grow like n")
    ax.set_xticks(n, [str(v) for v in n])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    plain_log_ticks(ax)  # 20, 50, 100, ..., not 10² and 10³ alone over under two decades
    return look.save(fig, stem)


def main(argv: list[str]) -> int:
    parser = arguments.functions()
    args = parser.parse_args(argv)
    look = look_of(args)
    if not args.dir.is_dir():
        parser.error(f"DIR must be a directory, got {str(args.dir)!r}")
    runs, _, broken = find_runs(args.dir)
    for path, why in broken.items():  # a run dir is data: a hostile or damaged one is left out, and said so
        print(f"gradbench functions: skipped broken run dir {path}: {why}", file=sys.stderr)
    runs = [r for r in runs if r.ok and r.summary.get("config")]
    for run in runs:  # a run dir is data: a model config that names code to call stops the command
        try:
            targets.check(run.summary["config"], str(run.path / "summary.json"), args.config_dir, prefix="config.")
        except ConfigError as e:
            print(f"gradbench functions: error: {e}", file=sys.stderr)
            return 2
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.choices.get("model", "?"), []).append(run)
    out = args.out or args.dir
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, group in by_model.items():
        if name == "sphere":
            rows = sphere_table(group)
            ok = [r for r in rows if r["reached"]]
            slope = float(np.polyfit(np.log([r["n"] for r in ok]), np.log([r["steps"] for r in ok]), 1)[0])
            with look.rc():
                figures = plot_sphere(rows, slope, out / "sphere_dims", look)
            lines = ["| n | runs reaching f < ε | steps (mean ± 95% CI) | theory | measured / theory |",
                     "|---|---|---|---|---|"]
            lines += [f"| {r['n']} | {r['reached']}/{r['runs']} | {r['steps']:.1f} ± {r['ci']:.1f} | "
                      f"{r['theory']:.1f} | {r['steps'] / r['theory']:.2f} |" for r in rows]
            lines += ["", f"Least-squares slope of log steps on log n: {slope:.3f} (theory over this range: "
                      f"{float(np.polyfit(np.log([r['n'] for r in rows]), np.log([r['theory'] for r in rows]), 1)[0]):.3f})."]
            files.write_text(out / "sphere_dims.md", "\n".join(lines) + "\n")
            print("\n".join(lines))
            drawn += [*figures, out / "sphere_dims.md"]
        elif "train_x1" in group[0].metrics:
            with look.rc():
                drawn += plot_paths(name, group, out / f"functions_{name}", look)
    if not drawn:
        parser.error(f"no test-function runs (model=beale | rosenbrock | sphere) under {args.dir}")
    print("\n".join(f"→ {p}" for p in drawn))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
