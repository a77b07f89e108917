"""The forward gradient with the tangent on the weights (Baydin et al. 2022), one or K tangents."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import jvp, vmap

from gradbench.errors import ConfigError, choose, require
from gradbench.estimators import forward_mode
from gradbench.estimators.base import Estimator, Passes, Spread, norm2
from gradbench.estimators.tangents import (COMBINES, FOURTH_MOMENT, STRUCTURES, Estimate, Rank1, TangentSampler,
                                           coefficients, estimate, projection_spread, second_moment)
from gradbench.models import Model, Objective, Params


ENGINES = ("auto", "fused", "jvp")


class Forward(Estimator):
    """Forward gradient (Baydin et al. 2022, "Gradients without Backpropagation", eq. 2–3).

    For a tangent v with zero mean and E[v vᵀ] = I over all parameters (`structure` dense or
    rank1, `tangent` law normal or rademacher: gradbench.estimators.tangents), one forward-mode pass
    gives the loss and d = ∇L·v (a Jacobian-vector product); g = d·v is an unbiased estimate
    of ∇L. With K = `num_tangents` tangents, in one pass that computes the primal once,
    `combine` makes one estimate of the K directional derivatives: `mean` averages the K
    estimates (unbiased, variance / K); `project` takes the orthogonal projection of ∇L on the
    tangents' span, B(BᵀB)⁻¹Bᵀ∇L (Flügel et al. 2024, arXiv 2410.17764). The projection's mean
    is (K/n)·∇L for dense normal tangents over n parameters (tangents.projection_spread): a
    scaled estimate, so its learning rate must be about n/K times the mean's to take the same
    step in expectation (Flügel's tuned rates on MNIST width 1024: mean K=16 2.7e-3, projection
    K=16 0.127); in exchange its error is no larger than ‖∇L‖ (E‖g‖² = (K/n)‖∇L‖² instead of
    ≈ (n/K)‖∇L‖²), so it stays stable at the rates that make it useful.

    `engine`: `fused` is gradbench.estimators.forward_mode (primal and tangents layer by layer, rank-1
    weights in factored form); `jvp` is torch.func.jvp over the whole parameter dict (any
    model; rank-1 tangents are formed densely first: same estimate, none of the saving);
    `auto` takes fused wherever the model supports it. `compile` wraps the fused pass in
    torch.compile: measured on a 2-core CPU (MLP 784-1024-1024-10) 10 % faster at batch 64 and
    20 % at 1024, for about 20 s of compilation (and a C++ compiler), so it is off by default
    and pays only on runs of thousands of steps.
    """

    stochastic = True

    def __init__(self, num_tangents: int = 1, tangent: str = "normal", structure: str = "dense",
                 engine: str = "auto", compile: bool = False, combine: str = "mean",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(isinstance(num_tangents, int) and num_tangents >= 1, "estimator.num_tangents",
                "must be an integer >= 1", num_tangents)
        choose("estimator.tangent", tangent, FOURTH_MOMENT)
        choose("estimator.combine", combine, dict.fromkeys(COMBINES))
        self.combine = combine
        choose("estimator.structure", structure, dict.fromkeys(STRUCTURES))
        choose("estimator.engine", engine, dict.fromkeys(ENGINES))
        self.num_tangents, self.tangent, self.structure, self.engine = num_tangents, tangent, structure, engine
        self._sampler: TangentSampler | None = None
        self._engine_of: tuple[Model, bool] | None = None
        self._directional = torch.compile(forward_mode.directional) if compile else forward_mode.directional

    def bind(self, model: Model) -> None:
        if self.engine == "fused" and not forward_mode.supports(model):
            raise ConfigError(f"estimator.engine=fused has no forward-mode rules for model "
                              f"{type(model).__name__}; use estimator.engine=auto or jvp")

    def _fused_for(self, model: Model) -> bool:
        """Whether this model takes the fused pass: decided once per model, not every step."""
        if self._engine_of is None or self._engine_of[0] is not model:
            self._engine_of = (model, self.engine != "jvp" and forward_mode.supports(model))
        return self._engine_of[1]

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, dict[str, Estimate]]:
        if self._sampler is None or not self._sampler.matches(params):
            self._sampler = TangentSampler(params, self.structure, self.tangent, self.num_tangents,
                                           self.generator)
        tangents = self._sampler()
        if self._fused_for(objective.model):
            loss, d = self._directional(objective.model, params, tangents, objective.x, objective.y)
        else:
            loss, d = _jvp(objective, params, tangents)
        return loss, estimate(coefficients(d.to(loss.dtype), tangents, self.combine), tangents)

    def spread(self, objective: Objective, params: Params, truth: Params) -> Spread | None:
        """mean: unbiased, E‖g − ∇L‖² = (E‖g₁‖² − ‖∇L‖²)/K (tangents.second_moment); project:
        tangents.projection_spread, exact for dense normal tangents only (else None)."""
        k = self.num_tangents
        if self.combine == "mean":
            return Spread(0.0, (second_moment(self.structure, self.tangent, truth) / norm2(truth) - 1) / k,
                          _dense_normal_cosine(truth) if (self.structure, self.tangent, k) == ("dense", "normal", 1) else None)
        if (self.structure, self.tangent) != ("dense", "normal"):
            return None
        share, variance, cosine = projection_spread(sum(g.numel() for g in truth.values()), k)
        return Spread((1 - share) ** 2, variance, cosine)


    def passes(self, model: Model) -> Passes:
        """One forward-mode pass carrying the K tangents (the primal computed once): K."""
        return Passes(forward_mode=self.num_tangents)


def _dense_normal_cosine(truth: Params) -> float:
    """E cos(g, ∇L) of one dense normal-tangent estimate: |v·∇L|/(‖v‖‖∇L‖) is the |first
    coordinate| of a uniform point on S^{n−1}, with mean Γ(n/2) / (√π Γ((n+1)/2)) ≈ √(2/(πn))."""
    n = sum(g.numel() for g in truth.values())
    return math.exp(math.lgamma(n / 2) - math.lgamma((n + 1) / 2)) / math.sqrt(math.pi)


def _jvp(objective: Objective, params: Params, tangents: dict) -> tuple[Tensor, Tensor]:
    """The reference route: torch.func.jvp over the whole parameter dict, dense tangents."""
    dense = {k: v.dense() if isinstance(v, Rank1) else v for k, v in tangents.items()}
    if len(next(iter(dense.values()))) == 1:
        loss, d = jvp(objective.loss, (params,), ({k: v[0] for k, v in dense.items()},))
        return loss, d.reshape(1)
    # vmap∘jvp promotes d to float64 when the loss has a Python-float term (torch 2.15);
    # the caller casts it back to the loss's dtype
    losses, d = vmap(lambda v: jvp(objective.loss, (params,), (v,)))(dense)
    return losses[0], d
