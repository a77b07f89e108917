"""Backpropagation (reverse-mode autodiff): the exact gradient, the reference every estimator meets."""

from __future__ import annotations

from torch import Tensor
from torch.func import grad_and_value

from gradbench.estimators.base import Estimator
from gradbench.models import Objective, Params


class Backward(Estimator):
    """Reverse-mode autodiff (backpropagation): the exact gradient."""

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        grads, loss = grad_and_value(objective.loss)(params)
        return loss, grads
