"""Central finite differences: a slow reference for checking, O(#params) forward passes."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from gradbench.errors import ConfigError, require
from gradbench.estimators.base import Estimator, Passes
from gradbench.models import Model, Objective, Params


class FiniteDifference(Estimator):
    """Central differences ∂L/∂θ_i ≈ (L(θ + h e_i) − L(θ − h e_i)) / 2h: a reference, not fast.

    Error: truncation h²·|∂³L|/6 plus rounding ≈ ε·|L|/h (ε the unit roundoff); in float64
    (ε ≈ 1.1e-16) h = 1e-6 keeps both near 1e-10, far below the check's 1e-6 tolerance; in
    float32 (ε ≈ 6e-8) take h ≈ 1e-2. A kink (ReLU) closer than h to a pre-activation
    spoils the entries it touches. Costs 2·#params forward passes, vmapped `chunk` at a time.
    """

    def __init__(self, step: float = 1e-6, float64: bool = True, chunk: int = 256,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(step > 0, "estimator.step", "must be > 0", step)
        require(chunk >= 1, "estimator.chunk", "must be >= 1", chunk)
        self.step, self.float64, self.chunk = step, float64, chunk

    def bind(self, model: Model) -> None:
        if model.local_losses:  # differences see the objective's value, not its detached gradient
            raise ConfigError("estimator=finite_difference measures the derivative of the loss's value; "
                              "model.local_losses=true is defined by gradients that stop at each block "
                              "(no value has them as its derivative): use estimator=backward")

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        first = next(iter(params.values()))
        dtype = torch.float64 if self.float64 else first.dtype
        objective = Objective(objective.model, objective.x.to(dtype), objective.y)
        sizes = [p.numel() for p in params.values()]
        theta = torch.cat([p.detach().reshape(-1) for p in params.values()]).to(dtype)

        def loss_at(flat: Tensor) -> Tensor:
            pieces = flat.split(sizes)
            return objective.loss({k: v.view(p.shape) for (k, p), v in zip(params.items(), pieces)})

        with torch.no_grad():
            loss = loss_at(theta)
            slopes = []
            for idx in torch.arange(theta.numel(), device=theta.device).split(self.chunk):
                rows = torch.arange(len(idx), device=theta.device)
                up, down = theta.repeat(len(idx), 1), theta.repeat(len(idx), 1)
                up[rows, idx] += self.step
                down[rows, idx] -= self.step
                # the step actually taken, after rounding θ ± h, not the nominal 2h
                slopes.append((vmap(loss_at)(up) - vmap(loss_at)(down)) / (up[rows, idx] - down[rows, idx]))
            flat = torch.cat(slopes).to(first.dtype)
        grads = {k: v.view(p.shape) for (k, p), v in zip(params.items(), flat.split(sizes))}
        return loss.to(first.dtype), grads

    def passes(self, model: Model) -> Passes:
        """2n + 1 evaluations for n parameters: L(θ) and L(θ ± h e_i) for each i."""
        return Passes(forward=2 * sum(p.numel() for p in model.parameters()) + 1)
