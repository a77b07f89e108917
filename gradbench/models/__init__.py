"""Models as plain nn.Modules, trained functionally through a dict of parameters.

Every model maps a batch of inputs to outputs and knows its own objective (`loss`) and
evaluation metrics, so the training loop never asks which model it is running. Input and
output sizes come from the data (`input_shape`, `num_classes`), never from the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from gradbench.errors import choose, require

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus}
INIT_LAWS = ("default", "uniform", "normal")
Params = dict[str, Tensor]
FLATTEN = nn.Flatten()  # N × ... → N × features: a stage without parameters, shared


class Model(nn.Module):
    """Base: softmax cross-entropy classifier with an optional L2 penalty λ·Σ‖W‖² (report 004).

    `init` selects the initial parameters: `default` (PyTorch's layer defaults),
    `uniform` U(a, b) or `normal` N(mean, std²) for every parameter, weights and biases alike.
    """

    metric_names = ("loss", "accuracy", "errors")

    def __init__(self, init: dict | None = None, l2: float = 0.0) -> None:
        super().__init__()
        self.init = dict(init or {"law": "default"})
        require(self.init.get("law") in INIT_LAWS, "model.init.law",
                f"must be one of {' | '.join(INIT_LAWS)}", self.init.get("law"))
        require(l2 >= 0, "model.l2", "must be >= 0", l2)
        self.l2 = l2

    def initialise(self, generator: torch.Generator) -> None:
        """Draw the initial parameters from `generator` alone (the global RNG is untouched)."""
        law = self.init["law"]
        if law == "default":
            seed = int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for module in self.modules():
                    if module is not self and hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            return
        with torch.no_grad():
            for p in self.parameters():
                if law == "uniform":
                    p.uniform_(self.init.get("a", -1.0), self.init.get("b", 1.0), generator=generator)
                else:
                    p.normal_(self.init.get("mean", 0.0), self.init.get("std", 1.0), generator=generator)

    def stages(self) -> list[tuple[str, nn.Module]] | None:
        """The layers in the order they apply, each with its parameters' name prefix, for
        models that are one chain of layers (`forward` runs them; gradbench.forward_mode
        fuses their forward-mode pass); None for any other model."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        for _, module in self.stages():
            x = module(x)
        return x

    def penalty(self, params: Params) -> Tensor | float:
        """λ·Σ‖W‖² over the weight matrices (biases are not penalised)."""
        if self.l2 == 0:
            return 0.0
        return self.l2 * sum(p.square().sum() for name, p in params.items() if p.dim() >= 2)

    def loss(self, outputs: Tensor, y: Tensor, params: Params) -> Tensor:
        """The training objective: mean cross-entropy plus the penalty."""
        return F.cross_entropy(outputs, y) + self.penalty(params)

    def metrics(self, outputs: Tensor, y: Tensor, params: Params) -> dict[str, Tensor]:
        """Whole-split metrics from the outputs of every example (as 0-dim tensors)."""
        wrong = outputs.argmax(1) != y
        return {"loss": self.loss(outputs, y, params), "accuracy": 1 - wrong.double().mean(),
                "errors": wrong.sum()}

    def confusion(self, outputs: Tensor, y: Tensor) -> Tensor:
        """Confusion matrix: rows true class, columns predicted class."""
        k = outputs.shape[1]
        return torch.bincount(y * k + outputs.argmax(1), minlength=k * k).reshape(k, k)


class MLP(Model):
    """Fully connected net: flatten → [linear → activation]* → linear (logits).

    `hidden=[]` is multinomial logistic regression (conf/model/logreg.yaml).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (),
                 activation: str = "relu", init: dict | None = None, l2: float = 0.0) -> None:
        super().__init__(init, l2)
        require(num_classes is not None, "dataset", "must be labelled for a classifier such as model=mlp",
                "unlabelled data")
        act = choose("model.activation", activation, ACTIVATIONS)
        require(all(h >= 1 for h in hidden), "model.hidden", "must be a list of positive sizes", list(hidden))
        sizes = [math.prod(input_shape), *hidden, num_classes]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(act())
        self.layers = nn.Sequential(*layers)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("flatten", FLATTEN), *((f"layers.{i}", m) for i, m in enumerate(self.layers))]


@dataclass
class Objective:
    """The loss on one batch as a pure function of the parameters (torch.func style)."""

    model: Model
    x: Tensor
    y: Tensor | None

    def loss(self, params: Params) -> Tensor:
        return self.model.loss(functional_call(self.model, params, (self.x,)), self.y, params)


def count_parameters(params: Params) -> int:
    return sum(p.numel() for p in params.values())
