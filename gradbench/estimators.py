"""Gradient estimators: at parameters θ, on one batch, the loss and a gradient estimate.

    estimate(objective, params) -> (loss, grads)   # grads: same keys and shapes as params

The training loop calls every estimator the same way and hands the grads to the optimizer.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad_and_value, jvp, vmap

from gradbench.errors import choose, require
from gradbench.manual import backprop_for
from gradbench.models import Model, Objective, Params


class Estimator:
    """Base class. `generator` feeds the estimator's own randomness (tangents), if any."""

    stochastic = False  # True: an unbiased random estimate (checked statistically, not exactly)

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def bind(self, model: Model) -> None:
        """Called once with the built model, before any step: raise a ConfigError for a model
        this estimator cannot handle (default: every model)."""

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        raise NotImplementedError

    def warm_up(self, objective: Objective, params: Params) -> None:
        """One untimed call (first-call tracing and allocation), leaving the tangent stream as
        it was: the timed steps and their random draws are the same with or without it."""
        state = self.generator.get_state() if self.generator is not None else None
        self(objective, params)
        if state is not None:
            self.generator.set_state(state)


class Backward(Estimator):
    """Reverse-mode autodiff (backpropagation): the exact gradient."""

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        grads, loss = grad_and_value(objective.loss)(params)
        return loss, grads


def _normal(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(n, generator=generator, device=like.device, dtype=like.dtype)


def _rademacher(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    signs = torch.randint(0, 2, (n,), generator=generator, device=like.device)
    return signs.to(like.dtype) * 2 - 1


TANGENT_LAWS = {"normal": _normal, "rademacher": _rademacher}


def sample_tangents(params: Params, count: int, law: str, generator: torch.Generator) -> Params:
    """`count` tangents over ALL parameters jointly: one flat draw of i.i.d. zero-mean,
    unit-variance entries, cut into the parameters' shapes (leading dim = count)."""
    draw = TANGENT_LAWS[law]
    first = next(iter(params.values()))
    flat = draw(count * sum(p.numel() for p in params.values()), generator, first).view(count, -1)
    pieces = flat.split([p.numel() for p in params.values()], dim=1)
    return {k: piece.view(count, *p.shape) for (k, p), piece in zip(params.items(), pieces)}


class Forward(Estimator):
    """Forward gradient (Baydin et al. 2022, "Gradients without Backpropagation", eq. 2–3).

    For a tangent v with i.i.d. zero-mean unit-variance entries over all parameters,
    one forward-mode pass gives the loss and d = ∇L·v (a Jacobian-vector product);
    g = d·v is an unbiased estimate of ∇L, since E[v vᵀ] = I. With K tangents the K
    estimates are averaged (one vmapped pass), dividing the variance by K.
    """

    stochastic = True

    def __init__(self, num_tangents: int = 1, tangent: str = "normal",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(num_tangents >= 1, "estimator.num_tangents", "must be >= 1", num_tangents)
        choose("estimator.tangent", tangent, TANGENT_LAWS)
        self.num_tangents, self.tangent = num_tangents, tangent

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        tangents = sample_tangents(params, self.num_tangents, self.tangent, self.generator)
        if self.num_tangents == 1:
            loss, d = jvp(objective.loss, (params,), ({k: v[0] for k, v in tangents.items()},))
            return loss, {k: d * v[0] for k, v in tangents.items()}
        losses, d = vmap(lambda v: jvp(objective.loss, (params,), (v,)))(tangents)
        # vmap∘jvp promotes d to float64 when the loss has a Python-float term (torch 2.15):
        # back to the parameters' dtype, or tensordot refuses the mix
        scale = d.to(losses.dtype) / self.num_tangents  # mean over tangents of d_k · v_k
        grads = {k: torch.tensordot(scale, v, dims=1) for k, v in tangents.items()}
        return losses[0], grads


class Manual(Estimator):
    """Hand-derived backpropagation, no autograd (gradbench/manual.py): logreg, mlp, toynet.

    `bind` refuses any other model before training starts.
    """

    _bound: tuple[Model, object] | None = None

    def bind(self, model: Model) -> None:
        self._bound = (model, backprop_for(model))  # looked up once, not on every step

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        model = objective.model
        if self._bound is None or self._bound[0] is not model:
            self.bind(model)
        return self._bound[1](model, params, objective.x, objective.y)


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
