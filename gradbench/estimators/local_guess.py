"""Local-guess forward gradient (LG-FG; Fournier, Rivaud, Belilovsky, Eickenberg, Oyallon,
ICML 2023, "Can Forward Gradient Match Backpropagation?").

The tangent is not random: it is a guess g of the gradient, each block's gradient of its own
local loss (the heads of `model.local_losses=true`, Model.add_heads), got by backprop through
that block and its head only (the block's input detached, as Model.objective does). The
target is the network's loss L (the last block's output, nothing detached), and one real
forward-mode pass along g (torch.func.jvp) gives its directional derivative ∇L·g, which scales
the guess: the projection of ∇L on g,

    scaling: network   ĝ = (∇L·g / ‖g‖²)·g                   one JVP
    scaling: block     ĝ_b = (∇_b L·g_b / ‖g_b‖²)·g_b per block  B JVPs, one vmapped pass

Per-block scaling is Fournier et al.'s (their Fig. 1: the global gradient at block j projected
on block j's guess), and it is what they report; it costs B tangent streams instead of one. The
last block has no head: its guess is ∇L itself, so under block scaling it gets its exact
gradient. The heads train on their local losses (their guess, unscaled): L does not see them.

Biased by design: ĝ is the projection of ∇L on the guess, as good as the guess's cosine with
∇L. Deterministic given the batch. What it estimates (`target`): ∇L for the network's
parameters, the local-loss gradient for the heads'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call, grad, jvp, vmap

from gradbench.errors import ConfigError, choose
from gradbench.estimators.base import Estimator, Passes, Spread, norm2
from gradbench.models import Model, Objective, Params

SCALINGS = ("network", "block")


def network_loss(model: Model, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """The network's own loss (cross-entropy of the last block's output + penalty), the local
    heads ignored and nothing detached."""
    return model.loss(functional_call(model, params, (x,)), y, params)


def block_of(model: Model, params: Params) -> dict[str, int | None]:
    """Parameter name → the index of the block whose stages hold it (None: a local head)."""
    owner = {f"{prefix}.": i for i, block in enumerate(model.blocks()) for prefix, _ in block.stages}
    return {name: next((i for p, i in owner.items() if name.startswith(p)), None) for name in params}


@dataclass
class Target(Objective):
    """The objective whose gradient the local guess estimates: L for the network's parameters,
    the local losses for the heads' (each part's other parameters held fixed)."""

    def loss(self, params: Params) -> Tensor:
        heads = block_of(self.model, params)
        net = {k: (p if heads[k] is not None else p.detach()) for k, p in params.items()}
        local = {k: (p.detach() if heads[k] is not None else p) for k, p in params.items()}
        return network_loss(self.model, net, self.x, self.y) + self.model.objective(local, self.x, self.y)


class LocalGuess(Estimator):
    """Local-guess forward gradient (module docstring): `scaling` network | block."""

    stochastic = True  # not random, but not ∇L either: checked by its error and cosine, not to a tolerance

    def __init__(self, scaling: str = "block", generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        choose("estimator.scaling", scaling, dict.fromkeys(SCALINGS))
        self.scaling = scaling

    def bind(self, model: Model) -> None:
        if not model.local_losses or model.stages() is None:
            raise ConfigError("estimator=local_guess guesses each block's gradient from its local loss: "
                              "it needs model.local_losses=true (model=mlp | cnn | cnn_paper)")

    def target(self, objective: Objective) -> Objective:
        return Target(objective.model, objective.x, objective.y)

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        model = objective.model
        guess = grad(objective.loss)(params)  # every block's local backprop, heads included
        owner = block_of(model, params)
        net = [k for k in params if owner[k] is not None]

        def loss(p: Params) -> Tensor:
            return network_loss(model, p, objective.x, objective.y)

        zeros = {k: torch.zeros_like(p) for k, p in params.items() if owner[k] is None}
        if self.scaling == "network":
            tangent = {**{k: guess[k] for k in net}, **zeros}
            value, slope = jvp(loss, (params,), (tangent,))
            scale = slope / sum(guess[k].square().sum() for k in net)
            out = {k: scale * guess[k] for k in net}
        else:
            blocks = sorted({owner[k] for k in net})
            # B tangents, block b's guess on its own parameters and 0 elsewhere: one vmapped pass
            tangents = {k: torch.stack([guess[k] if owner[k] == b else torch.zeros_like(guess[k]) for b in blocks])
                        for k in net}
            tangents.update({k: z.expand(len(blocks), *z.shape) for k, z in zeros.items()})
            values, slopes = vmap(lambda t: jvp(loss, (params,), (t,)))(tangents)
            value = values[0]
            sizes = torch.stack([sum(guess[k].square().sum() for k in net if owner[k] == b) for b in blocks])
            scales = dict(zip(blocks, slopes.to(value.dtype) / sizes))
            out = {k: scales[owner[k]] * guess[k] for k in net}
        out.update({k: guess[k] for k in params if owner[k] is None})
        return value.detach(), {k: out[k].detach() for k in params}

    def spread(self, objective: Objective, params: Params, truth: Params) -> Spread:
        """Deterministic: no variance; its bias² and cosine are those of the estimate itself
        against `truth` (the gradient of `target`), computed here."""
        _, g = self(objective, params)
        diff = {k: g[k] - truth[k] for k in truth}
        dot = sum((g[k].double() * truth[k].double()).sum().item() for k in truth)
        cosine = dot / math.sqrt(norm2(g) * norm2(truth))
        return Spread(norm2(diff) / norm2(truth), 0.0, cosine)

    def passes(self, model: Model) -> Passes:
        """One forward with the heads, the blocks' local backward passes (together one backward
        through the network, plus the heads), and one JVP per scale: 1 (network) or B (block)."""
        return Passes(forward=1, forward_mode=1 if self.scaling == "network" else len(model.blocks()), backward=1)
