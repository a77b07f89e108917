"""The estimator seam: at parameters θ, on one batch, the loss and a gradient estimate.

    estimate(objective, params) -> (loss, grads)   # grads: same keys as params, each a tensor
                                                   # of its shape or a factored LowRank of it

The training loop calls every estimator the same way and hands the grads to the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gradbench.models import Model, Objective, Params


@dataclass
class Spread:
    """What theory says of one estimate g of ∇L, relative to ‖∇L‖²: `bias2` = ‖E g − ∇L‖²,
    `variance` = E‖g − E g‖², `cosine` = E cos(g, ∇L) (None where there is no closed form).
    The mean of N estimates then has relative error ≈ sqrt(bias2 + variance / N)."""

    bias2: float
    variance: float
    cosine: float | None = None


@dataclass(frozen=True)
class Passes:
    """What one step costs, in passes over the batch: forward evaluations, forward-mode (JVP)
    passes and backward passes (a local backward through one block counts as the fraction of
    the network it covers). A forward-mode pass carrying K tangents counts K (its primal is
    computed once, so it costs less than K separate ones); a pass that only forms weight
    gradients from given output gradients (FG-A's contraction) counts ½ backward. The count
    that transfers to another device, where seconds do not."""

    forward: float = 0.0
    forward_mode: float = 0.0
    backward: float = 0.0


def norm2(grads: Params) -> float:
    """‖g‖² over all parameters, in float64."""
    return sum(g.double().square().sum().item() for g in grads.values())


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

    def spread(self, objective: Objective, params: Params, truth: Params) -> Spread | None:
        """The theory of this estimator's error at the true gradient `truth` (None: exact, or no
        theory); `gradbench check` and the variance sweep print it beside the measurement."""
        return None

    def target(self, objective: Objective) -> Objective:
        """The objective whose gradient this estimator estimates: `gradbench check`, the
        variance sweep and diagnose=true compare with its gradient (default: the training
        objective itself; the local guess: the network's loss, not the local ones)."""
        return objective

    def passes(self, model: Model) -> Passes | None:
        """What one step of this estimator costs on `model` (None: not stated)."""
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """State a resumed run must continue with that the seeded generator cannot redraw
        (FA / DFA's fixed feedback matrices): stored in checkpoint.pt, not in model.pt."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore `state_dict()` from a checkpoint (ValueError: it does not fit this estimator)."""
        if state:
            raise ValueError(f"this estimator keeps no state, the checkpoint has {sorted(state)}")

    def warm_up(self, objective: Objective, params: Params) -> None:
        """One untimed call (first-call tracing and allocation), leaving the tangent stream as
        it was: the timed steps and their random draws are the same with or without it."""
        state = self.generator.get_state() if self.generator is not None else None
        self(objective, params)
        if state is not None:
            self.generator.set_state(state)
