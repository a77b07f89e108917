"""Models as plain nn.Modules, trained functionally through a dict of parameters.

Every model maps a batch of inputs to outputs and knows its own objective (`loss`) and
evaluation metrics, so the training loop never asks which model it is running. Input and
output sizes come from the data (`input_shape`, `num_classes`), never from the config.

    __init__.py   Model (the seam), Objective, MLP, local-loss heads, activations, init laws
    cnn.py        the convolutional classifier (report 000's CNN, the paper's CNN)
    toynet.py     report 002's toy network (row vectors, K × K matrices)
    functions.py  optimisation test functions (Beale, Rosenbrock, Sphere) as models without data
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
    local_losses = False  # True once `add_heads` gave each hidden block its own classifier head

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
        models that are one chain of layers (`forward` runs them; gradbench.estimators.forward_mode
        fuses their forward-mode pass); None for any other model."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        for _, module in self.stages():
            x = module(x)
        return x

    def blocks(self) -> list[Block]:
        """The chain cut into blocks, each with its head (None: the block ends in the network's
        own output). Without local losses the whole chain is one block. A block boundary sits
        after a layer's activation (and pooling), before the next Linear, Conv2d or Flatten."""
        if not self.local_losses:
            return [Block(self.stages(), None)]
        heads = [[(f"heads.{i}.{j}", m) for j, m in enumerate(head)] for i, head in enumerate(self.heads)]
        return [Block(block, head) for block, head in zip(self._cuts(), [*heads, None])]

    def _cuts(self) -> list[list[tuple[str, nn.Module]]]:
        cuts, seen_layer = [[]], False
        for prefix, module in self.stages():
            if seen_layer and isinstance(module, (nn.Linear, nn.Conv2d, nn.Flatten)):
                cuts.append([])
                seen_layer = False
            seen_layer = seen_layer or isinstance(module, (nn.Linear, nn.Conv2d))
            cuts[-1].append((prefix, module))
        return cuts

    def add_heads(self, input_shape: tuple[int, ...], num_classes: int, groups: int = 1) -> None:
        """Local losses (Ren et al. 2023, simplified): a linear classifier head on every block
        but the last, on the block's output (a conv block's averaged over space first). With
        `groups` G > 1 the block's units (channels) are cut into G contiguous groups, each with
        its own linear head and loss (their sum is the block's loss): a unit then feeds one
        group's loss only, so activity perturbation's error scales with the group's size, not
        the layer's (Ren et al.'s groups). Heads are parameters like any other (`heads.i.*`):
        counted, initialised, checkpointed."""
        require(isinstance(groups, int) and groups >= 1, "model.local_groups", "must be an integer >= 1", groups)
        self.local_losses = True
        self.heads = nn.ModuleList()
        h = torch.zeros(1, *input_shape)
        with torch.no_grad():
            for stages in self._cuts()[:-1]:
                for _, module in stages:
                    h = module(h)
                require(h.shape[1] % groups == 0, "model.local_groups", f"must divide every hidden block's "
                        f"width (channels), {h.shape[1]} here", groups)
                pool = [SpatialMean()] if h.dim() == 4 else []
                self.heads.append(nn.Sequential(*pool, GroupedLinear(h.shape[1], num_classes, groups)))

    def objective(self, params: Params, x: Tensor, y: Tensor | None) -> Tensor:
        """The training objective on one batch as a pure function of `params`: the network's
        loss, or with local losses the sum of every block's local loss, each block's input
        detached so that no gradient reaches a block from later ones (the last block trains
        on the network's loss); the penalty counts once."""
        if not self.local_losses:
            return self.loss(functional_call(self, params, (x,)), y, params)
        total, h = self.penalty(params), x
        for block in self.blocks():
            h = run_stages(block.stages, params, h.detach())
            out = run_stages(block.head, params, h) if block.head else h
            total = total + grouped_cross_entropy(out, y)
        return total

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


@dataclass
class Block:
    """Stages that train on one loss: `head` (its own stages) maps the block's output to logits
    for the block's local loss; None for the last block, whose output is the network's."""

    stages: list[tuple[str, nn.Module]]
    head: list[tuple[str, nn.Module]] | None


class SpatialMean(nn.Module):
    """N × C × H × W → N × C: the mean over space, before a conv block's head."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3))


class GroupedLinear(nn.Module):
    """G independent linear maps, one per contiguous group of the input's features:
    N × (G·r) → N × G × out (G = 1: a plain linear head). weight G × out × r, bias G × out."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features // groups))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.weight.shape[2])  # nn.Linear's default, per group
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, h: Tensor) -> Tensor:
        return grouped_linear(h, self.weight, self.bias)


def grouped_linear(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """[..., N, G·r] → [..., N, G, out]: each group of features through its own map."""
    # as G matmuls W_g (out × r) @ h_gᵀ (r × N): on the CPU ~10× faster than the N × r @ r × out
    # layout einsum picks, whose tiny `out` (the classes) starves the BLAS kernel
    by_group = h.unflatten(-1, (weight.shape[0], -1)).movedim(-3, -1)  # ... × G × r × N
    out = (weight @ by_group).movedim(-1, -3)
    return out if bias is None else out + bias


def grouped_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy over examples; for N × G × classes logits summed over the G groups, so
    each unit's gradient (and the learning rate) keeps the scale of a single head's."""
    if logits.dim() == 3:
        y = y.unsqueeze(1).expand(-1, logits.shape[1])
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="sum") / len(logits)
    return F.cross_entropy(logits, y)


def run_stages(stages: list[tuple[str, nn.Module]], params: Params, h: Tensor) -> Tensor:
    """Apply `stages` with the weights taken from `params` (so torch.func transforms see them)."""
    for prefix, module in stages:
        if isinstance(module, nn.Linear):
            h = F.linear(h, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"))
        elif isinstance(module, GroupedLinear):
            h = grouped_linear(h, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"))
        elif isinstance(module, nn.Conv2d):
            h = F.conv2d(h, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"), module.stride,
                         module.padding, module.dilation, module.groups)
        else:
            h = module(h)
    return h


class MLP(Model):
    """Fully connected net: flatten → [linear → activation]* → linear (logits).

    `hidden=[]` is multinomial logistic regression (conf/model/logreg.yaml). `local_losses`:
    every hidden layer trains on its own linear head's loss, in `local_groups` groups of units
    (Model.add_heads).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (),
                 activation: str = "relu", init: dict | None = None, l2: float = 0.0,
                 local_losses: bool = False, local_groups: int = 1) -> None:
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
        if local_losses:
            self.add_heads(input_shape, num_classes, local_groups)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("flatten", FLATTEN), *((f"layers.{i}", m) for i, m in enumerate(self.layers))]


@dataclass
class Objective:
    """The training objective on one batch as a pure function of the parameters (torch.func
    style): the model's loss, or the sum of its local losses (Model.objective)."""

    model: Model
    x: Tensor
    y: Tensor | None

    def loss(self, params: Params) -> Tensor:
        return self.model.objective(params, self.x, self.y)


def count_parameters(params: Params) -> int:
    return sum(p.numel() for p in params.values())
