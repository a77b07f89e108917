"""`gradbench check [overrides]`: every gradient estimator against autograd, at one point.

    gradbench check model=mlp model.activation=softplus model.hidden=[16]

At the seed's initial parameters, on the first training batch (`check.batch_size`), in
float64, the reference is autograd (`torch.autograd.grad`). Each estimator of the catalogue
(every option of conf/estimator/, the selected one with its overrides, plus `check.extra`)
is then compared with it:
- deterministic ones (backward, manual, finite_difference): max abs difference, relative
  error ‖g − ∇L‖/‖∇L‖, cosine similarity; FAIL beyond `check.tolerance.<name>`;
- stochastic ones (forward, forward_activities, ...): the relative error of the mean of N
  estimates for each N of `check.samples`, next to what theory expects (the estimator's
  `spread`: sqrt(bias² + variance/N), relative to ‖∇L‖), and per single estimate the RMS
  relative error and the mean cosine similarity (with its expectation where one is known).
- biased ones by design (feedback_alignment, direct_feedback_alignment: `Estimator.biased`):
  their relative error and cosine with ∇L, measured, no verdict (no theory gives them);
An estimator that refuses the model (manual on a CNN) is listed as skipped. The table is
printed and written to check.csv, the reference to grads.json; if a deterministic estimator
disagrees, the command exits with status 1 (after writing both).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gradbench.data import batches
from gradbench.errors import ConfigError, JobFailed, require
from gradbench.estimators import Estimator
from gradbench.run.job import build, setup, stream, validate
from gradbench.run.metrics import write_json
from gradbench.models import Objective, Params, count_parameters
from gradbench.estimators.probes import compare
from gradbench.estimators.tangents import densify

log = logging.getLogger(__name__)
COLUMNS = ["estimator", "kind", "N", "max_abs_diff", "rel_error", "expected_rel_error",
           "cosine", "expected_cosine", "tolerance", "verdict", "note"]
ORDER = {"exact": 0, "crashed": 0, "skipped": 1, "biased": 2, "mean of N": 2, "each": 2}


def reference(objective: Objective, params: Params) -> tuple[torch.Tensor, Params]:
    """Loss and exact gradient by reverse-mode autograd (torch.autograd, not torch.func)."""
    leaves = {k: p.detach().clone().requires_grad_(True) for k, p in params.items()}
    loss = objective.loss(leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), dict(zip(params, grads))


def exact_row(name: str, estimator: Estimator, objective: Objective, params: Params,
              truth: Params, tolerance: float) -> dict:
    """One deterministic estimator against the reference; verdict pass or FAIL."""
    row = {"estimator": name, "kind": "exact", "N": 1, "tolerance": tolerance}
    _, grads = estimator(objective, params)
    stats = {k: v.item() for k, v in compare(grads, truth).items()}
    worst = max(truth, key=lambda k: (grads[k] - truth[k]).abs().max().item())
    ok = stats["rel_error"] <= tolerance  # NaN fails too
    return {**row, **stats, "verdict": "pass" if ok else "FAIL", "note": f"largest diff in {worst}"}


def biased_row(name: str, estimator: Estimator, objective: Objective, params: Params, truth: Params) -> dict:
    """A deterministic estimator that is not ∇L by design (feedback alignment): how far it is
    (relative error, cosine) is the measurement; there is no theory and no verdict."""
    _, grads = estimator(objective, params)
    stats = {k: v.item() for k, v in compare(grads, truth).items()}
    return {"estimator": name, "kind": "biased", "N": 1, **stats, "verdict": "-",
            "note": "biased by design: cosine with ∇L measured; no theory"}


def stochastic_rows(name: str, estimator: Estimator, objective: Objective, params: Params,
                    truth: Params, samples: list[int]) -> list[dict]:
    """Means of N estimates for each N in `samples` (one stream of max(samples) draws, running
    sum, nothing stored), then the per-estimate RMS relative error and mean cosine."""
    if estimator.target(objective) is not objective:  # it estimates another gradient (the local guess)
        truth = reference(estimator.target(objective), params)[1]
    spread = estimator.spread(objective, params, truth)
    t = torch.cat([v.reshape(-1) for v in truth.values()])
    total, sq_rel, cos_sum, rows = torch.zeros_like(t), 0.0, 0.0, []
    for i in range(1, max(samples) + 1):
        grads = densify(estimator(objective, params)[1])
        g = torch.cat([grads[k].reshape(-1) for k in truth])
        total += g
        sq_rel += ((g - t).norm() / t.norm()).item() ** 2
        cos_sum += ((g @ t) / (g.norm() * t.norm())).item()
        if i in samples:
            mean = total / i
            rows.append({"estimator": name, "kind": "mean of N", "N": i,
                         "max_abs_diff": (mean - t).abs().max().item(),
                         "rel_error": ((mean - t).norm() / t.norm()).item(),
                         "expected_rel_error": None if spread is None else math.sqrt(spread.bias2 + spread.variance / i),
                         "cosine": ((mean @ t) / (mean.norm() * t.norm())).item()})
    rows.append({"estimator": name, "kind": "each", "N": max(samples),
                 "rel_error": math.sqrt(sq_rel / max(samples)),
                 "expected_rel_error": None if spread is None else math.sqrt(spread.bias2 + spread.variance),
                 "cosine": cos_sum / max(samples), "expected_cosine": None if spread is None else spread.cosine,
                 "note": "RMS rel error and mean cosine of single estimates"})
    return rows


def catalogue(cfg: DictConfig, extra: DictConfig) -> dict[str, DictConfig]:
    """Every option of the estimator group (the selected one as configured) plus `extra`
    (name → estimator config: check.extra, bench.extra)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    selected = HydraConfig.get().runtime.choices.get("estimator")
    nodes = {}
    for name in GlobalHydra.instance().config_loader().get_group_options("estimator"):
        nodes[name] = cfg.estimator if name == selected else compose("config", [f"estimator={name}"]).estimator
    nodes.update(extra)
    return nodes


def _validate(cfg: DictConfig) -> tuple[int | None, list[int]]:
    size, samples = cfg.check.batch_size, list(cfg.check.samples)
    require(size is None or (isinstance(size, int) and size >= 1), "check.batch_size",
            "must be a positive integer or null", size)
    require(bool(samples) and all(isinstance(s, int) and s >= 1 for s in samples), "check.samples",
            "must be a non-empty list of positive integers", samples)
    return size, sorted(set(samples))


def check_job(cfg: DictConfig, run_dir: Path) -> float:
    """Run the check into `run_dir`; returns the worst deterministic relative error."""
    validate(cfg)
    batch_size, samples = _validate(cfg)
    cfg = OmegaConf.merge(cfg, {"dtype": "float64"})
    torch.use_deterministic_algorithms(cfg.deterministic)
    s = setup(cfg)
    n = len(s.data.train)
    idx = next(batches(n, min(batch_size or n, n), stream(cfg.seed, "batches"), s.device))
    batch = s.data.train.take(idx)
    objective = Objective(s.model, batch.x, batch.y)
    loss, truth = reference(objective, s.params)
    write_json(run_dir / "grads.json", {"loss": loss.item(), "grads": {k: v.tolist() for k, v in truth.items()}})
    log.info("check: %d parameters, batch of %d, reference loss %.10g (autograd, float64)",
             count_parameters(s.params), len(idx), loss.item())

    rows = []
    for name, node in catalogue(cfg, cfg.check.extra).items():
        try:
            estimator = build(node, "estimator", generator=stream(cfg.seed, "tangents", s.device))
            estimator.bind(s.model)
            params = {k: p.clone() for k, p in s.params.items()}  # its own: replay moves them in place
            if getattr(estimator, "biased", False):
                rows.append(biased_row(name, estimator, objective, params, truth))
            elif estimator.stochastic:
                rows += stochastic_rows(name, estimator, objective, params, truth, samples)
            else:
                tolerance = cfg.check.tolerance.get(name, cfg.check.tolerance.default)
                rows.append(exact_row(name, estimator, objective, params, truth, tolerance))
        except ConfigError as e:  # refuses this model (manual on a CNN) or is misconfigured
            rows.append({"estimator": name, "kind": "skipped", "note": str(e)})
        except Exception as e:  # a crash is a failed check; the other estimators still run
            rows.append({"estimator": name, "kind": "crashed", "verdict": "FAIL",
                         "note": f"{type(e).__name__}: {e}"})

    rows.sort(key=lambda r: ORDER[r["kind"]])  # stable: exact, skipped, then the statistics
    write_table(run_dir / "check.csv", rows)
    print(format_table(rows))
    failed = [r["estimator"] for r in rows if r.get("verdict") == "FAIL"]
    if failed:
        raise JobFailed(f"check: {', '.join(failed)} disagree with autograd beyond tolerance or "
                        f"crashed; see {run_dir / 'check.csv'}")
    log.info("check passed: every deterministic estimator agrees with autograd → %s", run_dir)
    exact = [r["rel_error"] for r in rows if r["kind"] == "exact"]
    return max(exact) if exact else math.nan


def write_table(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def format_table(rows: list[dict]) -> str:
    """Aligned plain-text table; numbers to 3 significant digits, '-' where not computed."""
    def cell(value) -> str:
        if value is None or value == "":
            return "-"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    cells = [COLUMNS] + [[cell(row.get(c)) for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in cells)
