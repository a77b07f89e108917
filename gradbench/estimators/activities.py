"""Forward gradient with the tangent on the activities (FG-A; Ren, Kornblith, Liao, Hinton,
ICLR 2023, "Scaling forward gradient with local losses").

Every Linear / Conv2d layer l gets a tangent u_{l,n} on its output z_l (the pre-activation),
drawn independently for each example n (K of them; law normal | rademacher, zero mean, unit
variance). One forward pass carries, beside the primal, one tangent stream per perturbed layer:
stream l starts at z_l and runs through the rest of its block (to the block's head with local
losses, to the network's loss without), which gives the per-example directional derivatives

    d_{l,n} = δ_{l,n} · u_{l,n},   δ_{l,n} = ∂L/∂z_{l,n}   (L the batch's mean loss)

and ĝ_{l,n} = d_{l,n} u_{l,n}, an unbiased estimate of δ_{l,n}. The layer's parameters get what
backprop builds from δ: Σ_n ĝ_{l,n} x_{l,n}ᵀ for a Linear (a conv: the same contraction as its
weight gradient), Σ_n ĝ_{l,n} for the bias. Unbiased, since that map is linear in δ.

Variance. For a law with m₄ = E u⁴, E[(δ·u)² u uᵀ] = ‖δ‖² I + 2 δδᵀ + (m₄ − 3) diag(δ²), so
the error e = ĝ − δ of one example has Cov(e) = ‖δ‖² I + δδᵀ + (m₄ − 3) diag(δ²). For one linear
layer W: q × p with bias, inputs x_n, the parameter error is e_n (x_n, 1)ᵀ; examples are
independent, so with K tangents averaged

    E‖Ĝ − G‖² = (q + m₄ − 2)/K · Σ_n ‖δ_n‖² (‖x_n‖² + 1),     E‖Ĝ‖² = ‖G‖² + E‖Ĝ − G‖²,

G = Σ_n δ_n (x_n, 1)ᵀ the true gradient (q + 1 for normal tangents, q − 1 for Rademacher). The
error grows with the layer's output size q, where a weight tangent's grows with the parameter
count (E‖g − ∇L‖² = (n + 1)‖∇L‖²), and it is a sum of per-example terms, each carrying the
1/N² of the mean loss, so a batch of N averages it down like 1/N against ‖G‖². A conv layer
follows from the same covariance with the patches of its input (`expected_error`).

Cost: the primal pass, the streams (stream l through the layers after l in its block) and the
contraction for the weights (as backprop's weight gradient). Without local losses the streams
cost what backprop's input gradients cost, so a step costs about a backprop step; with local
losses the streams stop at the block's head and a step costs about forward + contraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.grad import conv2d_weight

from gradbench.errors import ConfigError, choose, require
from gradbench.estimators import forward_mode
from gradbench.estimators.base import Estimator, Passes, Spread, norm2
from gradbench.estimators.manual import DERIVATIVES
from gradbench.estimators.tangents import FOURTH_MOMENT
from gradbench.models import GroupedLinear, Model, Objective, Params, SpatialMean, grouped_cross_entropy, grouped_linear

PERTURBED = (nn.Linear, nn.Conv2d, GroupedLinear)
PASSIVE = (nn.MaxPool2d, nn.Flatten, SpatialMean)  # parameter-free stages with a tangent rule
Draw = Callable[[torch.Size], Tensor]  # K × shape of one layer's output tangents


@dataclass
class Perturbed:
    """One perturbed layer of one pass: its input, its tangents u (K × N × out) and, once the
    block's loss is reached, d (K × N) = the per-example directional derivatives."""

    prefix: str
    module: nn.Module
    inp: Tensor
    u: Tensor
    d: Tensor | None = None


def supports(model: Model) -> bool:
    """True if the model is a chain of layers with rules here and the softmax cross-entropy loss."""
    stages = model.stages()
    kinds = (*PERTURBED, *PASSIVE, *DERIVATIVES)
    return (stages is not None and type(model).loss is Model.loss
            and all(isinstance(m, kinds) for b in model.blocks() for _, m in [*b.stages, *(b.head or [])]))


def directional(model: Model, params: Params, x: Tensor, y: Tensor, draw: Draw) -> tuple[Tensor, list[Perturbed]]:
    """The objective (Model.objective's value) and every perturbed layer with its d filled in:
    K × N × G, one directional derivative per group's loss for the layers whose units feed one
    group's head each (local_groups), else G = 1."""
    loss, layers, h, groups = model.penalty(params), [], x, group_counts(model)
    for block in model.blocks():
        opened: list[Perturbed] = []
        h, dh = _run(block.stages, params, h, None, opened, draw)
        out, dout = _run(block.head, params, h, dh, opened, draw) if block.head else (h, dh)
        loss = loss + grouped_cross_entropy(out, y)
        slope = out.softmax(-1)  # ∂loss/∂logits per example (and group): (softmax − onehot)/N
        slope.view(len(y), -1, slope.shape[-1])[torch.arange(len(y), device=y.device), :, y] -= 1
        slope = slope.div_(len(y))
        d = (dout * slope).sum(-1)  # S·K × N (× G)
        d = (d if out.dim() == 3 else d.unsqueeze(-1)).unflatten(0, (len(opened), -1))  # S × K × N × G
        for layer, d_layer in zip(opened, d):
            layer.d = d_layer if groups.get(layer.prefix, 1) == d.shape[-1] else d_layer.sum(-1, keepdim=True)
        layers += opened
    return loss, layers


def group_counts(model: Model) -> dict[str, int]:
    """Perturbed layer → the number of group losses its units split over: a block's layer and its
    head's grouped map feed G group losses, each unit one of them (a block holds one layer)."""
    counts = {}
    for block in model.blocks():
        heads = [(p, m) for p, m in block.head or [] if isinstance(m, GroupedLinear)]
        if heads:
            layer = [p for p, m in block.stages if isinstance(m, PERTURBED)][-1]
            counts[layer] = counts[heads[0][0]] = heads[0][1].groups
    return counts


def _run(stages, params: Params, h: Tensor, dh: Tensor | None, opened: list[Perturbed],
         draw: Draw) -> tuple[Tensor, Tensor | None]:
    """Primal h and the open streams dh (S·K × N × ...) through `stages`; every Linear / Conv2d
    propagates the open streams and opens its own."""
    for prefix, module in stages:
        if isinstance(module, PERTURBED):
            w, b = params[f"{prefix}.weight"], params.get(f"{prefix}.bias")
            if isinstance(module, nn.Linear):
                z = F.linear(h, w, b)
                dz = dh @ w.T if dh is not None else None
            elif isinstance(module, GroupedLinear):
                z = grouped_linear(h, w, b)
                dz = grouped_linear(dh, w, None) if dh is not None else None
            else:
                def conv(inp: Tensor, bias: Tensor | None = None) -> Tensor:
                    return F.conv2d(inp, w, bias, module.stride, module.padding, module.dilation, module.groups)
                z = conv(h, b)
                dz = conv(dh.flatten(0, 1)).unflatten(0, dh.shape[:2]) if dh is not None else None
            u = draw(z.shape)
            opened.append(Perturbed(prefix, module, h, u))
            dh = u if dz is None else torch.cat([dz, u])
            h = z
        elif isinstance(module, SpatialMean):
            h, dh = module(h), None if dh is None else dh.mean((3, 4))
        elif type(module) in forward_mode.RULES:  # max-pool, flatten: any leading tangent dims
            h, dh = forward_mode.RULES[type(module)](module, prefix, params, {}, h, dh)
        else:  # an activation: dh ⊙ σ'(h)
            a = module(h)
            if dh is not None:
                dh = dh * DERIVATIVES[type(module)](module, h, a)
            h = a
    return h, dh


def estimate(model: Model, params: Params, layers: list[Perturbed]) -> Params:
    """Every parameter's estimate from the per-example ĝ = mean_k d_k u_k of its layer's output
    (the penalty's gradient 2λW is known exactly and added as it is)."""
    grads: Params = {}
    for layer in layers:
        (k, n), groups = layer.u.shape[:2], layer.d.shape[-1]  # each group: a contiguous run of units
        g = torch.einsum("kng,kngr->ngr", layer.d, layer.u.view(k, n, groups, -1)).div_(k).view(layer.u.shape[1:])
        w = params[f"{layer.prefix}.weight"]
        if isinstance(layer.module, nn.Linear):
            grads[f"{layer.prefix}.weight"] = g.T @ layer.inp
            reduce = (0,)
        elif isinstance(layer.module, GroupedLinear):  # g: N × G × out, input N × G·r
            grads[f"{layer.prefix}.weight"] = torch.einsum("ngo,ngr->gor", g, layer.inp.unflatten(1, (w.shape[0], -1)))
            reduce = (0,)
        else:
            m = layer.module
            grads[f"{layer.prefix}.weight"] = conv2d_weight(layer.inp, w.shape, g, m.stride, m.padding,
                                                            m.dilation, m.groups)
            reduce = (0, 2, 3)
        if f"{layer.prefix}.bias" in params:
            grads[f"{layer.prefix}.bias"] = g.sum(reduce)
    if model.l2:
        for name, p in params.items():
            if p.dim() >= 2:
                grads[name] = grads[name] + 2 * model.l2 * p
    return {k: grads[k] for k in params}


class ForwardActivities(Estimator):
    """Forward gradient with per-example tangents on every layer's output (module docstring):
    unbiased; `num_tangents` K averaged per example and layer (variance / K); `tangent` law
    normal | rademacher. With `model.local_losses=true` it is LG-FG-A (Ren et al. 2023)."""

    stochastic = True

    def __init__(self, num_tangents: int = 1, tangent: str = "normal",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(isinstance(num_tangents, int) and num_tangents >= 1, "estimator.num_tangents",
                "must be an integer >= 1", num_tangents)
        choose("estimator.tangent", tangent, FOURTH_MOMENT)
        self.num_tangents, self.tangent = num_tangents, tangent

    def bind(self, model: Model) -> None:
        if not supports(model):
            raise ConfigError(f"estimator=forward_activities needs a chain of Linear / Conv2d layers with "
                              f"a cross-entropy loss (model=logreg | mlp | cnn | cnn_paper), not "
                              f"{type(model).__name__}; use estimator=forward or backward")

    def draw(self, shape: torch.Size, like: Tensor) -> Tensor:
        """K tangents of one layer's output, i.i.d. per example and entry, in one generator call."""
        u = torch.empty(self.num_tangents, *shape, device=like.device, dtype=like.dtype)
        if self.tangent == "normal":
            return u.normal_(generator=self.generator)
        return u.random_(0, 2, generator=self.generator).mul_(2).sub_(1)  # Rademacher ±1

    @torch.no_grad()
    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        model, x = objective.model, objective.x
        loss, layers = directional(model, params, x, objective.y, lambda shape: self.draw(shape, x))
        return loss, estimate(model, params, layers)

    def passes(self, model: Model) -> Passes:
        """One forward pass carrying K tangents per perturbed layer (K forward-mode), then the
        contraction of the per-example estimates with each layer's input: the weight-gradient
        half of a backward pass (½)."""
        return Passes(forward_mode=self.num_tangents, backward=0.5)

    def spread(self, objective: Objective, params: Params, truth: Params) -> Spread:
        """E‖g − ∇L‖² / ‖∇L‖² of one estimate, from the per-example δ (module docstring)."""
        return Spread(0.0, expected_error(objective, params, FOURTH_MOMENT[self.tangent]) /
                      norm2(truth) / self.num_tangents)


def reference_losses(model: Model, params: Params, x: Tensor, y: Tensor,
                     offsets: dict[str, Tensor]) -> tuple[list[Tensor], dict[str, Tensor]]:
    """Per block, the per-example (and per-group) loss terms, N × G, whose sum over blocks,
    examples and groups plus the penalty is the objective, with `offsets[prefix]` added to
    each perturbed layer's output; and every perturbed layer's input. Plain autograd- and
    torch.func-traceable code: the reference the fused pass is tested against, and the source
    of the δ's of the theory (δ_l = ∂Σ/∂offsets[l] at 0)."""
    terms, inputs, h = [], {}, x
    for block in model.blocks():
        def run(stages, h):
            for prefix, module in stages:
                if isinstance(module, PERTURBED):
                    inputs[prefix] = h
                    h = _apply(module, prefix, params, h) + offsets[prefix]
                else:
                    h = module(h)
            return h
        h = run(block.stages, h.detach())
        out = run(block.head, h) if block.head else h.unsqueeze(1)  # N × G × classes, G = 1 here
        losses = F.cross_entropy(out.transpose(1, 2), y.unsqueeze(1).expand(-1, out.shape[1]), reduction="none")
        terms.append(losses / len(y))
    return terms, inputs


def _apply(module: nn.Module, prefix: str, params: Params, h: Tensor) -> Tensor:
    w, b = params[f"{prefix}.weight"], params.get(f"{prefix}.bias")
    if isinstance(module, nn.Linear):
        return F.linear(h, w, b)
    if isinstance(module, GroupedLinear):
        return grouped_linear(h, w, b)
    return F.conv2d(h, w, b, module.stride, module.padding, module.dilation, module.groups)


def output_shapes(model: Model, params: Params, x: Tensor) -> dict[str, torch.Size]:
    """Every perturbed layer's output shape (N × ...) on the batch x."""
    def zeros(shape: torch.Size) -> Tensor:
        return torch.zeros(1, *shape, dtype=x.dtype, device=x.device)

    with torch.no_grad():
        _, layers = directional(model, params, x, torch.zeros(len(x), dtype=torch.long, device=x.device), zeros)
    return {layer.prefix: layer.u.shape[1:] for layer in layers}


def expected_error(objective: Objective, params: Params, m4: float) -> float:
    """E‖ĝ − ∇L‖² of one estimate (K = 1) over all parameters: for each perturbed layer and
    example, with the error covariance ‖δ‖² I + δδᵀ + (m₄ − 3) diag(δ²) of ĝ_z and A the linear
    map from z's gradient to the parameters' (patches P of the input, plus a 1 for the bias),

        E‖A e‖² = ‖δ‖² ‖A‖²_F + ‖A δ‖² + (m₄ − 3) Σ_i δ_i² ‖A e_i‖²,

    summed over layers and examples (each example's tangents are independent). With G group
    losses each unit's ĝ comes from its own group's d, so the covariance is block diagonal and
    the first term becomes Σ_g ‖δ_g‖² ‖A_g‖²_F: the error shrinks about G-fold."""
    model, x, y = objective.model, objective.x, objective.y
    shapes = output_shapes(model, params, x)
    offsets = {k: torch.zeros(s, dtype=x.dtype, device=x.device, requires_grad=True) for k, s in shapes.items()}
    terms, inputs = reference_losses(model, params, x, y, offsets)
    deltas = dict(zip(offsets, torch.autograd.grad(sum(t.sum() for t in terms), list(offsets.values()))))
    total, groups = 0.0, group_counts(model)
    with torch.no_grad():
        for prefix, delta in deltas.items():
            module, inp = _module(model, prefix), inputs[prefix].detach()
            if isinstance(module, GroupedLinear):  # per group g: (out + m₄ − 2)‖δ_g‖²(‖x_g‖² + 1)
                x2 = inp.unflatten(1, (module.groups, -1)).square().sum(2) + 1  # N × G
                total += ((delta.shape[2] + m4 - 2) * delta.square().sum(2) * x2).sum().item()
                continue
            if isinstance(module, nn.Linear):
                patches, delta = inp.unsqueeze(2), delta.unsqueeze(2)  # N × p × 1, N × q × 1
            else:
                patches = F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)
                delta = delta.flatten(2)  # N × C × positions
            if f"{prefix}.bias" in params:  # the bias sees a constant 1 at every position
                patches = torch.cat([patches, torch.ones_like(patches[:, :1])], 1)
            per_position = patches.square().sum(1)  # N × positions: ‖A e_i‖² for each output entry
            delta2 = delta.square()
            g = groups.get(prefix, 1)  # Σ_g ‖δ_g‖² ‖A_g‖²_F, A_g: the group's C/G output channels
            by_group = delta2.unflatten(1, (g, -1)).sum((2, 3))  # N × G
            total += (by_group.sum(1) * per_position.sum(1) * (delta.shape[1] // g)).sum().item()
            total += torch.einsum("ncp,njp->ncj", delta, patches).square().sum().item()  # ‖Aδ‖²
            total += (m4 - 3) * (delta2 * per_position.unsqueeze(1)).sum().item()
    return total


def _module(model: Model, prefix: str) -> nn.Module:
    return dict(model.named_modules())[prefix]
