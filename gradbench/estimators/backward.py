"""Backpropagation (reverse-mode autodiff): the exact gradient, the reference every estimator meets."""

from __future__ import annotations

from torch import Tensor
from torch.func import grad_and_value

from gradbench.estimators.base import Estimator, Passes
from gradbench.models import Model, Objective, Params


class Backward(Estimator):
    """Reverse-mode autodiff (backpropagation): the exact gradient."""

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        grads, loss = grad_and_value(objective.loss)(params)
        return loss, grads

    def passes(self, model: Model) -> Passes:
        """One taped forward pass and one backward pass (with local losses, the blocks' local
        backward passes, together one through the network and its heads)."""
        return Passes(forward=1, backward=1)
