"""Optional per-step diagnostics for training runs (`diagnose=true`), run off the clock.

A probe sees each step's objective, parameters and gradient estimate before the update and
returns extra metrics.csv columns; `gradbench.run.train.train` excludes its time from step_time_s.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad

from gradbench.models import Objective, Params
from gradbench.estimators.tangents import Estimate, densify


def compare(estimate: dict[str, Estimate], truth: Params) -> dict[str, Tensor]:
    """How close `estimate` (dense or factored) is to `truth`, over all parameters jointly
    (as 0-dim tensors): max_abs_diff, rel_error = ‖g − ∇L‖ / ‖∇L‖ and cosine = g·∇L / (‖g‖ ‖∇L‖)."""
    estimate = densify(estimate)
    g = torch.cat([estimate[k].reshape(-1) for k in truth])
    t = torch.cat([v.reshape(-1) for v in truth.values()])
    diff = g - t
    return {"max_abs_diff": diff.abs().max(), "rel_error": diff.norm() / t.norm(),
            "cosine": (g @ t) / (g.norm() * t.norm())}


class GradientProbe:
    """Cosine similarity and relative error of the step's estimate against the true batch
    gradient (one extra reverse-mode pass at the same parameters, on the same batch) of what
    the estimator estimates (`Estimator.target`: the training objective unless it says otherwise)."""

    columns = ["grad_cosine", "grad_rel_error"]

    def __init__(self, estimator=None) -> None:
        self.estimator = estimator

    def __call__(self, objective: Objective, params: Params, grads: Params) -> dict[str, float]:
        target = objective if self.estimator is None else self.estimator.target(objective)
        truth = grad(target.loss)(params)
        stats = compare(grads, truth)
        return {"grad_cosine": stats["cosine"].item(), "grad_rel_error": stats["rel_error"].item()}
