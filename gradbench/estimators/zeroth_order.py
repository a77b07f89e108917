"""Zeroth-order gradients (SPSA / randomized gradient estimation): loss values only.

For a direction v with E v = 0 and E v vᵀ = I (the forward gradient's laws and structures,
gradbench.estimators.tangents), the central difference

    d = (L(θ + εv) − L(θ − εv)) / 2ε = ∇L·v + (ε²/6)·∇³L[v, v, v] + O(ε⁴)

replaces the forward gradient's JVP, and g = d·v estimates ∇L: no forward-mode pass, no
backward pass, inference memory only (Spall 1992; MeZO, Malladi et al. 2023; ZO-Bench, Zhang
et al. 2024). `difference: forward` takes d = (L(θ + εv) − L(θ)) / ε, reusing L(θ) across the
K directions (K + 1 evaluations instead of 2K); its error is (ε/2)·vᵀHv, whose mean over a
symmetric law times v vanishes (odd moment), so its bias is O(ε²) too, but it adds
(ε²/4)E[(vᵀHv)²‖v‖²] of variance. Rounding adds ≈ u·|L|/ε to d (u the unit roundoff): in
float32 take ε ≈ 1e-3 (MeZO's), in float64 ε ≈ 1e-5 or less.

`replay: true` is MeZO's in-place replay: the parameters themselves are moved to θ ± εv and
back, v regenerated from a seed tensor by tensor (gradbench.estimators.seeded), and the
estimate is handed to the optimizer as seeds and coefficients, so no direction is ever held
whole: a step's memory is an evaluation's. The moves round: after +εv, −2εv, +εv an entry is
within 1.5 ulp of (|θ| + 2ε|v|) of where it was (each of three roundings ≤ ½ ulp), not
bit-identical; that float drift is all the replay costs (tests/test_zeroth_order.py states it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.errors import ConfigError, choose, require
from gradbench.estimators import perturbed, seeded
from gradbench.estimators.base import Estimator, Passes, Spread, norm2
from gradbench.estimators.forward import _dense_normal_cosine
from gradbench.estimators.tangents import (FOURTH_MOMENT, STRUCTURES, Estimate, Rank1, TangentSampler, estimate,
                                           second_moment)
from gradbench.models import Model, Objective, Params

DIFFERENCES = ("central", "forward")


class ZerothOrder(Estimator):
    """K random-direction differences of the loss (module docstring): `num_queries` K,
    `difference` central (2K evaluations) | forward (K + 1), step `epsilon`, direction `law`
    normal | rademacher, `structure` dense | rank1, `replay` in place from seeds (MeZO);
    `chunk`: entries of a dense direction drawn at a time under replay."""

    stochastic = True

    def __init__(self, num_queries: int = 1, difference: str = "central", epsilon: float = 1e-3,
                 law: str = "normal", structure: str = "dense", replay: bool = False, chunk: int = 65536,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(isinstance(num_queries, int) and num_queries >= 1, "estimator.num_queries",
                "must be an integer >= 1", num_queries)
        require(isinstance(epsilon, (int, float)) and epsilon > 0, "estimator.epsilon", "must be > 0", epsilon)
        require(isinstance(chunk, int) and chunk >= 1, "estimator.chunk", "must be an integer >= 1", chunk)
        choose("estimator.difference", difference, dict.fromkeys(DIFFERENCES))
        choose("estimator.law", law, FOURTH_MOMENT)
        choose("estimator.structure", structure, dict.fromkeys(STRUCTURES))
        self.num_queries, self.difference, self.epsilon = num_queries, difference, float(epsilon)
        self.law, self.structure, self.replay, self.chunk = law, structure, replay, chunk
        self._sampler: TangentSampler | None = None

    def bind(self, model: Model) -> None:
        if model.local_losses:  # differences see the objective's value, not its detached gradient
            raise ConfigError("estimator=zeroth_order measures the derivative of the loss's value; "
                              "model.local_losses=true is defined by gradients that stop at each block "
                              "(no value has them as its derivative): use estimator=local_guess or backward")

    @torch.no_grad()
    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, dict[str, Estimate]]:
        if self.replay:
            return self._replay(objective, params)
        if self._sampler is None or not self._sampler.matches(params):
            self._sampler = TangentSampler(params, self.structure, self.law, self.num_queries, self.generator)
        tangents = self._sampler()
        index, scales = self.queries(params)
        if self.structure == "rank1" and perturbed.supports(objective.model):
            losses = perturbed.evaluate(objective.model, params, tangents, index, scales, objective.x, objective.y)
        else:
            losses = evaluate(objective, params, tangents, index, scales)
        loss, d = self.slopes(losses)
        return loss, estimate(d / self.num_queries, tangents)

    def queries(self, params: Params) -> tuple[Tensor, Tensor]:
        """(direction index, scale) of each evaluation: central ±ε for each direction; forward
        the unperturbed point first (scale 0), then +ε for each direction."""
        first = next(iter(params.values()))
        k = torch.arange(self.num_queries, device=first.device)
        eps = torch.full((self.num_queries,), self.epsilon, device=first.device, dtype=first.dtype)
        if self.difference == "central":
            return torch.cat([k, k]), torch.cat([eps, -eps])
        return torch.cat([k[:1], k]), torch.cat([eps[:1] * 0, eps])

    def slopes(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, d) from the evaluations in `queries`' order. The central difference reports
        the mean of L(θ ± εv) as the loss: L(θ) + O(ε²), no extra evaluation spent on it."""
        k = self.num_queries
        if self.difference == "central":
            plus, minus = losses[:k], losses[k:]
            return (plus + minus).mean() / 2, (plus - minus) / (2 * self.epsilon)
        return losses[0], (losses[1:] - losses[0]) / self.epsilon

    def _replay(self, objective: Objective, params: Params) -> tuple[Tensor, dict[str, Estimate]]:
        """MeZO: move θ in place along each seeded direction and back, evaluating on the way."""
        first = next(iter(params.values()))
        base = int(torch.randint(2**62, (1,), generator=self.generator, device=first.device))
        seeds = [seeded.tensor_seed(base, -1 - k) for k in range(self.num_queries)]
        eps, losses = self.epsilon, []

        def move(seed: int, scale: float) -> None:
            seeded.perturb(params, seed, self.law, self.structure, self.chunk, scale)

        if self.difference == "forward":
            losses.append(objective.loss(params))
        minus = []
        for seed in seeds:
            move(seed, eps)
            losses.append(objective.loss(params))
            if self.difference == "central":
                move(seed, -2 * eps)
                minus.append(objective.loss(params))
                move(seed, eps)
            else:
                move(seed, -eps)
        loss, d = self.slopes(torch.stack(losses + minus))
        c = d / self.num_queries
        return loss, {name: seeded.Seeded(seeds, c, i, self.law, self.structure, self.chunk, p.shape)
                      for i, (name, p) in enumerate(params.items())}

    def warm_up(self, objective: Objective, params: Params) -> None:
        """Replay moves the parameters (and rounds them): its warm-up is one plain evaluation,
        so a resumed run's parameters are not moved by a step that was never taken."""
        if not self.replay:
            return super().warm_up(objective, params)
        with torch.no_grad():
            objective.loss(params)

    def spread(self, objective: Objective, params: Params, truth: Params) -> Spread:
        """As ε → 0 the forward gradient's: unbiased, E‖g − ∇L‖² = (E‖g₁‖² − ‖∇L‖²)/K
        (tangents.second_moment for this law and structure). The difference's own bias,
        (ε²/6)·E[∇³L[v,v,v]·v] (= (ε²/2)·∇(ΔL) for normal dense v), needs third derivatives
        and is left out: relative to ‖∇L‖ it is O(ε²) (≈ 1e-6 at ε = 1e-3 on the MLPs here),
        far below the variance's ≈ n/K."""
        k = self.num_queries
        variance = (second_moment(self.structure, self.law, truth) / norm2(truth) - 1) / k
        cosine = _dense_normal_cosine(truth) if (self.structure, self.law, k) == ("dense", "normal", 1) else None
        return Spread(0.0, variance, cosine)

    def passes(self, model: Model) -> Passes:
        """Loss evaluations only: 2K central, K + 1 forward."""
        k = self.num_queries
        return Passes(forward=2 * k if self.difference == "central" else k + 1)


def evaluate(objective: Objective, params: Params, tangents: dict, index: Tensor, scales: Tensor) -> Tensor:
    """The Q losses at θ + scales[q]·v_{index[q]}, each from a perturbed copy of θ (any model;
    rank-1 tangents formed densely: same values, none of the fused route's saving)."""
    dense = {k: v.dense() if isinstance(v, Rank1) else v for k, v in tangents.items()}
    out = []
    for k, c in zip(index.tolist(), scales.tolist()):
        if c == 0:
            out.append(objective.loss(params))
        else:
            out.append(objective.loss({n: p + c * dense[n][k] for n, p in params.items()}))
    return torch.stack(out)

