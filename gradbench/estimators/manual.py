"""Hand-derived backpropagation (no autograd) for the models the reports derive by hand.

    loss, grads = backprop_for(model)(model, params, x, y)

Every formula is a forward pass that keeps its intermediates, then the chain rule applied
by hand, layer by layer, in reverse (reports 002, 003, 004). Row-vector convention: a batch
is N × features and a linear layer is h = a Wᵀ + b with W out × in (nn.Linear's layout).
`Manual` (below) wraps this as an estimator; `gradbench check` compares it
with autograd.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradbench.errors import ConfigError
from gradbench.estimators.base import Estimator, Passes
from gradbench.models import MLP, Model, Objective, Params
from gradbench.models.toynet import ToyNet

Backprop = Callable[[Model, Params, Tensor, Tensor | None], tuple[Tensor, Params]]

# σ'(h) for each activation module, from its input h and output a = σ(h).
DERIVATIVES: dict[type, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda m, h, a: (h > 0).to(h.dtype),  # 0 at the kink, as torch's relu backward
    nn.Sigmoid: lambda m, h, a: a * (1 - a),
    nn.Tanh: lambda m, h, a: 1 - a * a,
    # softplus(h) = log(1 + e^{βh})/β has derivative sigmoid(βh); torch switches to the
    # identity above the threshold, so the derivative is exactly 1 there.
    nn.Softplus: lambda m, h, a: torch.where(h * m.beta > m.threshold, 1.0, torch.sigmoid(h * m.beta)),
}


def _penalise(model: Model, params: Params, loss: Tensor, grads: Params) -> Tensor:
    """Add λ·Σ‖W‖² (weight matrices only, as `Model.penalty`) and its gradient 2λW."""
    if model.l2 == 0:
        return loss
    for name, p in params.items():
        if p.dim() >= 2:
            grads[name] = grads[name] + 2 * model.l2 * p
    return loss + model.penalty(params)


@torch.no_grad()
def mlp(model: MLP, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Params]:
    """Any-depth MLP with softmax cross-entropy (report 004's derivation, generalised).

    Forward: a_0 = x, h_l = a_{l-1} W_lᵀ + b_l, a_l = σ(h_l); logits = h_L.
    Loss: mean_i [logsumexp(logits_i) − logits_i,y_i], so ∂L/∂logits = (softmax − onehot)/N.
    Backward, δ = ∂L/∂h_l: ∂L/∂W_l = δᵀ a_{l-1}, ∂L/∂b_l = Σ_i δ_i, ∂L/∂a_{l-1} = δ W_l,
    and through an activation δ ← ∂L/∂a ⊙ σ'(h).
    """
    a = x.flatten(1)
    tape = []  # what each layer's backward step needs, in forward order
    for i, layer in enumerate(model.layers):
        if isinstance(layer, nn.Linear):
            tape.append((f"layers.{i}", a))
            a = a @ params[f"layers.{i}.weight"].T + params[f"layers.{i}.bias"]
        else:
            h, a = a, layer(a)
            tape.append((layer, h, a))
    n = a.shape[0]
    log_p = a - a.logsumexp(1, keepdim=True)
    loss = -log_p.gather(1, y[:, None]).mean()
    delta = (log_p.exp() - F.one_hot(y, a.shape[1]).to(a.dtype)) / n
    grads: Params = {}
    for entry in reversed(tape):
        if isinstance(entry[0], str):
            prefix, a_in = entry
            grads[f"{prefix}.weight"] = delta.T @ a_in
            grads[f"{prefix}.bias"] = delta.sum(0)
            delta = delta @ params[f"{prefix}.weight"]
        else:
            layer, h, a_out = entry
            delta = delta * DERIVATIVES[type(layer)](layer, h, a_out)
    loss = _penalise(model, params, loss, grads)
    return loss, {k: grads[k] for k in params}


@torch.no_grad()
def toynet(model: ToyNet, params: Params, x: Tensor, y: None = None) -> tuple[Tensor, Params]:
    """Report 002: s = sigmoid(x A), z = s + x B, out = z C, L = mean_i ‖out_i‖².

    ∂L/∂out = 2·out/N; ∂L/∂C = zᵀ ∂L/∂out; ∂L/∂z = ∂L/∂out Cᵀ; ∂L/∂B = xᵀ ∂L/∂z;
    ∂L/∂A = xᵀ (∂L/∂z ⊙ s(1 − s)).
    """
    A, B, C = params["A"], params["B"], params["C"]
    s = torch.sigmoid(x @ A)
    z = s + x @ B
    out = z @ C
    loss = out.square().sum(1).mean()
    d_out = 2 * out / x.shape[0]
    d_z = d_out @ C.T
    grads = {"A": x.T @ (d_z * s * (1 - s)), "B": x.T @ d_z, "C": z.T @ d_out}
    return _penalise(model, params, loss, grads), grads


# Exact types: a subclass (a CNN built on MLP, say) may compute something else.
FORMULAS: dict[type, Backprop] = {MLP: mlp, ToyNet: toynet}


def backprop_for(model: Model) -> Backprop:
    """The hand-derived backprop for `model`, or a ConfigError if there is none."""
    formula = FORMULAS.get(type(model))
    if formula is None:
        raise ConfigError(
            f"estimator=manual has no hand-derived gradient for model {type(model).__name__} "
            f"(supported: model=logreg | mlp | toynet); use estimator=backward or forward")
    if model.local_losses:
        raise ConfigError("estimator=manual has no hand-derived gradient for model.local_losses=true; "
                          "use estimator=backward (local backprop) or forward_activities")
    if formula is mlp:
        unknown = {type(m).__name__ for m in model.layers if not isinstance(m, nn.Linear)} - {
            t.__name__ for t in DERIVATIVES}
        if unknown:
            raise ConfigError(f"estimator=manual has no derivative for activation {', '.join(sorted(unknown))} "
                              f"(supported: relu | sigmoid | tanh | softplus)")
    return formula


class Manual(Estimator):
    """Hand-derived backpropagation, no autograd (gradbench/estimators/manual.py): logreg, mlp, toynet.

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

    def passes(self, model: Model) -> Passes:
        """Backprop written out: one forward pass (its activations kept) and one backward pass."""
        return Passes(forward=1, backward=1)
