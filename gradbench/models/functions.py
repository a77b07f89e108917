"""Optimisation test functions as models without data: the parameters are the point, the loss is f.

    gradbench train model=rosenbrock dataset=none estimator=forward optimizer=gd optimizer.lr=0.001
    gradbench train model=sphere model.dim=32 dataset=none estimator=forward

Report 000 and the forward-gradient paper's first experiment run forward gradients on these.
Every estimator and optimizer works on them unchanged (the data is one empty row, ignored).
Metrics: `loss` = f, `gap` = f − f*, `distance` = ‖θ − θ*‖, and for 2-d functions the point
itself (`x1`, `x2`), so a run's metrics.csv holds its trajectory.

    Beale       f = (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²,   f* = 0 at (3, 0.5)
    Rosenbrock  f = Σ_i 100 (x_{i+1} − x_i²)² + (1 − x_i)²,                      f* = 0 at (1, ..., 1)
    Sphere      f = Σ_i x_i²,                                                     f* = 0 at 0
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradbench.errors import require
from gradbench.models import Model, Params


def sphere_forward_lr(n: int) -> float:
    """The best constant step of forward-gradient descent on f = ‖x‖² in n dimensions.

    With g = (∇f·v)v, ∇f = 2x, v ~ N(0, I): E‖x − lr·g‖² = ‖x‖²(1 − 4 lr + 4 lr²(n + 2)), smallest
    at lr* = 1/(2(n + 2)), where E f_{k+1} = (1 − 1/(n + 2)) E f_k: the expected progress per
    step falls like 1/n, and the steps to reach f < ε from f_0 grow like (n + 2)·log(f_0/ε).
    (Exact gradient descent, lr = 1/2, reaches the minimum in one step whatever n.)
    """
    return 1 / (2 * (int(n) + 2))


def _vector(value, dim: int, key: str) -> Tensor:
    """A list of `dim` numbers, or one number for every coordinate, as float64."""
    values = [float(value)] * dim if isinstance(value, (int, float)) else [float(v) for v in value]
    require(len(values) == dim, key, f"must be one number or a list of {dim} (model.dim)", value)
    return torch.tensor(values, dtype=torch.float64)


class TestFunction(Model):
    """Base: one parameter `point` (started at `start`), loss f(point); `minimum` is θ*."""

    __test__ = False  # not a pytest class, whatever its name
    fixed_dim: int | None = None  # Beale is 2-d; the others take `dim`

    def __init__(self, input_shape: tuple[int, ...] = (0,), num_classes: int | None = None,
                 start: float | list = 1.0, minimum: float | list = 0.0, dim: int = 2) -> None:
        super().__init__({"law": "default"})
        require(num_classes is None, "model", "test functions take no labelled data: use dataset=none",
                f"labelled data with {num_classes} classes")
        dim = self.fixed_dim or dim
        require(isinstance(dim, int) and dim >= 1, "model.dim", "must be a positive integer", dim)
        self.start = _vector(start, dim, "model.start")
        self.register_buffer("minimum", _vector(minimum, dim, "model.minimum"))
        self.point = nn.Parameter(self.start.clone())
        self.metric_names = ("loss", "gap", "distance", *(("x1", "x2") if dim == 2 else ()))

    def initialise(self, generator: torch.Generator) -> None:
        """The configured start, the same for every seed (the estimator's tangents vary)."""
        with torch.no_grad():
            self.point.copy_(self.start)

    def f(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.f(self.point).expand(len(x))  # f at the point, once per (empty) input row

    def loss(self, outputs: Tensor, y: Tensor | None, params: Params) -> Tensor:
        return outputs.mean()

    def metrics(self, outputs: Tensor, y: Tensor | None, params: Params) -> dict[str, Tensor]:
        point = params["point"]
        value = self.loss(outputs, y, params)
        out = {"loss": value, "gap": value - self.f(self.minimum.to(point.dtype)),
               "distance": (point - self.minimum.to(point.dtype)).norm()}
        if len(point) == 2:
            out.update(x1=point[0], x2=point[1])
        return out


class Beale(TestFunction):
    fixed_dim = 2

    def f(self, x: Tensor) -> Tensor:
        a, b = x[..., 0], x[..., 1]
        return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


class Rosenbrock(TestFunction):
    def f(self, x: Tensor) -> Tensor:
        return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


class Sphere(TestFunction):
    def f(self, x: Tensor) -> Tensor:
        return x.square().sum(-1)
