"""`gradbench variance [overrides]`: each estimator's error against its theory as the network grows.

    gradbench variance                                   # penguins MLPs, widths 8..1024, depths 1..4
    gradbench variance dataset=mnist variance.batch_size=64 variance.samples=50

For every MLP of the sweep, widths `variance.widths` at `variance.depth` hidden layers, then
depths `variance.depths` at width `variance.width`, at the seed's initial parameters, on the first
training batch, in float64: the true gradient by autograd, then `variance.samples` single
estimates of each estimator of `variance.estimators`, and their relative mean-square error
E‖g − ∇L‖²/‖∇L‖² (mean ± standard error over the samples) beside the estimator's theory
(Estimator.spread: bias² + variance). Weight perturbation's error grows with the parameter
count (≈ n + 1), activity perturbation's with the layer widths. Writes variance.csv and
variance.png (measured points with their standard errors, theory as dashed lines), drawn as
`variance.look` says (`variance.look.style=paper variance.look.width=page`: the README's).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gradbench.commands.check import catalogue
from gradbench.data import batches
from gradbench.errors import require
from gradbench.estimators.base import norm2
from gradbench.estimators.tangents import densify
from gradbench.present.figstyle import FORMATS, PALETTE, WIDTHS, Look, legend
from gradbench.run import files
from gradbench.run.job import build, setup, stream, validate
from gradbench.models import Objective, count_parameters

log = logging.getLogger(__name__)
COLUMNS = ["sweep", "width", "depth", "num_params", "estimator", "samples", "rel_mse", "rel_mse_se", "theory"]


def variance_job(cfg: DictConfig, run_dir: Path) -> None:
    validate(cfg)
    v = cfg.variance
    for key in ("widths", "depths"):
        require(len(v[key]) >= 1 and all(isinstance(w, int) and w >= 1 for w in v[key]), f"variance.{key}",
                "must be a non-empty list of positive integers", list(v[key]))
    require(isinstance(v.samples, int) and v.samples >= 2, "variance.samples", "must be an integer >= 2", v.samples)
    look = look_of(v.look)
    options = catalogue(cfg, {})
    unknown = [e for e in v.estimators if e not in options]
    require(not unknown, "variance.estimators", f"must be options of conf/estimator ({' | '.join(options)})", unknown)
    cfg = OmegaConf.merge(cfg, {"dtype": "float64"})
    s = setup(cfg)
    n = len(s.data.train)
    idx = next(batches(n, min(v.batch_size or n, n), stream(cfg.seed, "batches"), s.device))
    batch = s.data.train.take(idx)
    sweeps = [("width", w, v.depth) for w in v.widths] + [("depth", v.width, d) for d in v.depths]
    rows = []
    for sweep, width, depth in sweeps:
        model = build(OmegaConf.merge(cfg.model, {"hidden": [width] * depth}), "model",
                      input_shape=s.data.input_shape, num_classes=s.data.num_classes)
        model.initialise(stream(cfg.seed, "init"))
        model.to(device=s.device, dtype=torch.float64)
        params = {k: p.detach() for k, p in model.named_parameters()}
        objective = Objective(model, batch.x, batch.y)
        leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
        truth = dict(zip(params, torch.autograd.grad(objective.loss(leaves), list(leaves.values()))))
        for name in v.estimators:
            estimator = build(options[name], "estimator", generator=stream(cfg.seed, "tangents", s.device))
            estimator.bind(model)
            target, true = estimator.target(objective), truth
            if target is not objective:  # it estimates another gradient (the local guess)
                mine = {k: p.clone().requires_grad_() for k, p in params.items()}
                true = dict(zip(params, torch.autograd.grad(target.loss(mine), list(mine.values()))))
            spread = estimator.spread(objective, params, true)
            mine = {k: p.clone() for k, p in params.items()}  # its own: replay moves them in place
            # float64: torch.tensor of Python floats would round them to float32 (1e-7 relative)
            errors = torch.tensor([_sq_error(estimator(objective, mine)[1], true) for _ in range(v.samples)],
                                  dtype=torch.float64)
            rows.append({"sweep": sweep, "width": width, "depth": depth, "num_params": count_parameters(params),
                         "estimator": name, "samples": v.samples, "rel_mse": errors.mean().item(),
                         "rel_mse_se": errors.std().item() / math.sqrt(v.samples),
                         "theory": None if spread is None else spread.bias2 + spread.variance})
        log.info("%s sweep: width %d, depth %d done", sweep, width, depth)
    def write(f):
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    files.atomic_write(run_dir / "variance.csv", write)  # a symlink planted there is replaced, not followed
    labels = {name: method_name(name, options[name]) for name in v.estimators}
    figures = plot(rows, run_dir / "variance", f"{len(idx)} examples, {v.samples} estimates per point", look, labels)
    print(f"→ {run_dir / 'variance.csv'}, {', '.join(map(str, figures))}")


def method_name(name: str, node: DictConfig) -> str:
    """An estimator option by the README tables' name, its config saying which method it is
    (forward_project with K = 8 dense tangents: "projection K = 8")."""
    from gradbench.present import names

    found = names.method({"estimator": name}, {"estimator": OmegaConf.to_container(node, resolve=True)})
    return found[0] if found else names.option("estimator", name)


def look_of(node: DictConfig) -> Look:
    """variance.look as a figstyle.Look, each key checked against what figstyle allows."""
    require(node.style in ("default", "paper"), "variance.look.style", "must be one of default | paper", node.style)
    require(node.width is None or node.width in WIDTHS, "variance.look.width",
            f"must be null or one of {' | '.join(WIDTHS)}", node.width)
    formats = tuple(node.formats)
    require(formats and set(formats) <= set(FORMATS), "variance.look.formats",
            f"must be a non-empty list of {' | '.join(FORMATS)}", list(formats))
    return Look(node.style, node.width, formats)


def _sq_error(grads: dict, truth: dict) -> float:
    """‖g − ∇L‖² / ‖∇L‖² of one estimate."""
    g = densify(grads)
    return sum((g[k] - t).double().square().sum().item() for k, t in truth.items()) / norm2(truth)


# Each estimator its own marker and theory dash pattern, and its points nudged sideways by a
# share of SPREAD (a fraction of a doubling on the width axis, of a layer on the depth axis):
# dense and rank-1 weight perturbation have the same error, and drawn alike one hid the other.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("--", "-.", (0, (6, 2)), (0, (4, 1.5, 1, 1.5, 1, 1.5)), (0, (8, 2, 2, 2)), (0, (2, 1)))
SPREAD = 0.3


def plot(rows: list[dict], stem: Path, note: str, look: Look, labels: dict[str, str] | None = None) -> list[Path]:
    """Relative MSE against width (left) and depth (right), log scales (draw); stem.<format>."""
    with look.rc():
        return look.save(draw(rows, note, look, labels), stem)


def draw(rows: list[dict], note: str, look: Look, labels: dict[str, str] | None = None):
    """The variance figure: each estimator in its colour and marker, measured points with ± 2
    s.e. bars (nudged apart so coinciding estimators both show), its theory in its dashes;
    `labels`: estimator option → legend name (default: the option's display name)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullLocator

    from gradbench.present.names import option

    names = list(dict.fromkeys(r["estimator"] for r in rows))
    looks = {n: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
                 "dashes": DASHES[i % len(DASHES)], "nudge": SPREAD * (i / max(len(names) - 1, 1) - 0.5)}
             for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=look.size((9, 3.6)), sharey=True, layout="constrained")
    for ax, sweep in zip(axes, ("width", "depth")):
        for name in names:
            mine = [r for r in rows if r["sweep"] == sweep and r["estimator"] == name]
            xs = [r[sweep] for r in mine]
            nudge = looks[name]["nudge"]
            shown = [x * 2 ** nudge for x in xs] if sweep == "width" else [x + nudge for x in xs]
            ax.errorbar(shown, [r["rel_mse"] for r in mine], yerr=[2 * r["rel_mse_se"] for r in mine],
                        fmt=looks[name]["marker"], color=looks[name]["color"], mfc="none" if nudge > 0 else None)
            theory = [(x, r["theory"]) for x, r in zip(xs, mine) if r["theory"] is not None]
            if theory:
                ax.plot(*zip(*theory), color=looks[name]["color"], ls=looks[name]["dashes"])
        if sweep == "width":  # the widths themselves as ticks, in plain numbers (not 2⁴)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["width"] for r in mine}))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_yscale("log")
        fixed = mine[0]["depth"] if sweep == "width" else mine[0]["width"]
        ax.set_xlabel(f"hidden width (depth {fixed})" if sweep == "width" else f"hidden layers (width {fixed})")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("relative mean-square error\nE‖g − ∇L‖² / ‖∇L‖²")
    # one entry per estimator (its marker and dashes in its colour), then what marker and dashes mean
    handles = [Line2D([], [], color=looks[n]["color"], marker=looks[n]["marker"], ls=looks[n]["dashes"],
                      mfc="none" if looks[n]["nudge"] > 0 else None, label=(labels or {}).get(n) or option("estimator", n))
               for n in names]
    handles += [Line2D([], [], color="grey", marker="o", ls="none", label="measured ± 2 s.e."),
                Line2D([], [], color="grey", ls="--", label="theory (dashes)")]
    legend(fig, axes[-1], look, handles, long=True)
    if look.titles:
        fig.suptitle(f"Gradient estimators' error against theory ({note})")
    return fig
