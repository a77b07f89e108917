"""Report 002's toy network (row vectors, K × K matrices, no labels):

    z = sigmoid(x A) + x B,   out = z C,   loss = mean over the batch of ‖out‖²

K is the input size (`dataset.features` of `toy_inputs`). A, B, C are drawn U(0, 1) unless given
explicitly as nested lists (`model.A=[[...], ...]`). Report 002's gradient descent:

    gradbench train model=toynet dataset=toy_inputs estimator=manual optimizer.lr=0.01
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradbench.errors import ConfigError, require
from gradbench.models import Model, Params


def _matrix(value, key: str, k: int) -> Tensor:
    """A K×K nested list (a ListConfig too) as a float64 tensor, or a ConfigError naming `key`."""
    try:
        matrix = torch.tensor([[float(v) for v in row] for row in value], dtype=torch.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a nested list of numbers (K rows of K), got {value!r}") from None
    require(tuple(matrix.shape) == (k, k), key, f"must be {k}×{k} (K = the input size)", value)
    return matrix


class ToyNet(Model):
    """z = sigmoid(x A) + x B, out = z C; the loss is the batch mean of ‖out‖² (+ the L2 penalty)."""

    metric_names = ("loss",)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int | None = None,
                 A: list | None = None, B: list | None = None, C: list | None = None,
                 init: dict | None = None, l2: float = 0.0) -> None:
        super().__init__(init or {"law": "uniform", "a": 0.0, "b": 1.0}, l2)
        require(num_classes is None, "model", "toynet learns from unlabelled inputs (report 002): use "
                "dataset=toy_inputs", f"labelled data with {num_classes} classes")
        require(len(input_shape) == 1, "model", "toynet needs flat inputs (N × K)", list(input_shape))
        k = input_shape[0]
        self.given = {name: _matrix(value, f"model.{name}", k)
                      for name, value in (("A", A), ("B", B), ("C", C)) if value is not None}
        # float64 from the start, so explicit matrices keep every digit; the run's dtype is
        # applied after initialise (job.setup), so float32 runs round the same draw.
        self.A, self.B, self.C = (nn.Parameter(torch.empty(k, k, dtype=torch.float64)) for _ in range(3))

    def initialise(self, generator: torch.Generator) -> None:
        """U(0, 1) (report 002) for `default`; then the matrices given explicitly replace theirs.

        All three are always drawn, so giving one explicitly leaves the others' draws unchanged.
        """
        if self.init["law"] == "default":
            self.init = {"law": "uniform", "a": 0.0, "b": 1.0}
        super().initialise(generator)
        with torch.no_grad():
            for name, matrix in self.given.items():
                getattr(self, name).copy_(matrix)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.sigmoid(x @ self.A) + x @ self.B
        return z @ self.C

    def loss(self, outputs: Tensor, y: Tensor | None, params: Params) -> Tensor:
        """Mean over the batch of ‖out_i‖²: its gradient is report 002's batch-averaged one."""
        return outputs.square().sum(1).mean() + self.penalty(params)

    def metrics(self, outputs: Tensor, y: Tensor | None, params: Params) -> dict[str, Tensor]:
        return {"loss": self.loss(outputs, y, params)}
