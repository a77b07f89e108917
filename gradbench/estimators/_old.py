"""Gradient estimators: at parameters θ, on one batch, the loss and a gradient estimate.

    estimate(objective, params) -> (loss, grads)   # grads: same keys as params, each a tensor
                                                   # of its shape or a factored LowRank of it

The training loop calls every estimator the same way and hands the grads to the optimizer.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad_and_value, jvp, vmap

from gradbench import forward_mode
from gradbench.errors import ConfigError, choose, require
from gradbench.manual import backprop_for
from gradbench.models import Model, Objective, Params
from gradbench.tangents import FOURTH_MOMENT, STRUCTURES, Estimate, Rank1, TangentSampler, estimate


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


ENGINES = ("auto", "fused", "jvp")


class Forward(Estimator):
    """Forward gradient (Baydin et al. 2022, "Gradients without Backpropagation", eq. 2–3).

    For a tangent v with zero mean and E[v vᵀ] = I over all parameters (`structure` dense or
    rank1, `tangent` law normal or rademacher: gradbench.tangents), one forward-mode pass
    gives the loss and d = ∇L·v (a Jacobian-vector product); g = d·v is an unbiased estimate
    of ∇L. With K = `num_tangents` tangents the K estimates are averaged, dividing the
    variance by K, in one pass that computes the primal once.

    `engine`: `fused` is gradbench.forward_mode (primal and tangents layer by layer, rank-1
    weights in factored form); `jvp` is torch.func.jvp over the whole parameter dict (any
    model; rank-1 tangents are formed densely first: same estimate, none of the saving);
    `auto` takes fused wherever the model supports it. `compile` wraps the fused pass in
    torch.compile: measured on a 2-core CPU (MLP 784-1024-1024-10) 10 % faster at batch 64 and
    20 % at 1024, for about 20 s of compilation (and a C++ compiler), so it is off by default
    and pays only on runs of thousands of steps.
    """

    stochastic = True

    def __init__(self, num_tangents: int = 1, tangent: str = "normal", structure: str = "dense",
                 engine: str = "auto", compile: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(isinstance(num_tangents, int) and num_tangents >= 1, "estimator.num_tangents",
                "must be an integer >= 1", num_tangents)
        choose("estimator.tangent", tangent, FOURTH_MOMENT)
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
        return loss, estimate(d.to(loss.dtype), tangents)


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
