"""Loss evaluations at rank-1 perturbed weights, never forming a perturbed copy of a weight.

    losses = evaluate(model, params, tangents, index, scales, x, y)   # Q losses L(θ + c_q v_{k_q})

For a weight tangent a·bᵀ, x·(W + c·a bᵀ)ᵀ = x Wᵀ + c·(x·b) aᵀ: the perturbed layer costs its
plain product plus O(batch·(in + out)). The Q queries ride along one pass as a leading
dimension (one matrix product for all of them past the first layer); the first layer's
input is the same for every query, so its product x Wᵀ is computed once and shared. A conv
kernel a ⊗ b adds a·conv(x, b), b a single-output-channel kernel (one grouped conv for all
queries). Biases take dense tangents. The λ‖W‖² penalty at W + c·a bᵀ is
λ(‖W‖² + 2c·aᵀW b + c²‖a‖²‖b‖²).

Rules: Linear, Conv2d (groups 1), MaxPool2d, Flatten and the activations of
gradbench.estimators.manual.DERIVATIVES, with Model's own loss; other models form the
perturbed weights densely (gradbench.estimators.zeroth_order).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradbench.estimators.manual import DERIVATIVES
from gradbench.estimators.tangents import Rank1, Tangent
from gradbench.models import Model, Params

LAYERS = (nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.Flatten)


def supports(model: Model) -> bool:
    """True if every stage of `model` has a rule here and its loss is Model's own."""
    stages = model.stages()
    return (stages is not None and type(model).loss is Model.loss and not model.local_losses
            and all(type(m) in LAYERS or type(m) in DERIVATIVES for _, m in stages)
            and all(m.groups == 1 for _, m in stages if isinstance(m, nn.Conv2d)))


def queries(tangents: dict[str, Tangent], index: Tensor, scales: Tensor) -> dict[str, Tangent]:
    """The Q query tangents c_q·v_{k_q}: rank-1 blocks as (c·a, b), dense blocks scaled."""
    out: dict[str, Tangent] = {}
    for name, v in tangents.items():
        if isinstance(v, Rank1):
            out[name] = Rank1(v.a[index] * scales[:, None], v.b[index], v.shape)
        else:
            out[name] = v[index] * scales.view(-1, *[1] * (v.dim() - 1))
    return out


def evaluate(model: Model, params: Params, tangents: dict[str, Tangent], index: Tensor,
             scales: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The Q losses at θ + scales[q]·v_{index[q]}; every weight's tangent Rank1, biases dense."""
    q = queries(tangents, index, scales)
    h, shared = x, True  # shared: h is the batch's own N × ..., not yet Q × N × ...
    for prefix, module in model.stages():
        if isinstance(module, nn.Linear):
            h = _linear(params, q, prefix, h, shared)
            shared = False
        elif isinstance(module, nn.Conv2d):
            h = _conv2d(module, params, q, prefix, h, shared)
            shared = False
        elif isinstance(module, nn.Flatten):
            h = h.flatten(module.start_dim + (0 if shared else 1))
        elif isinstance(module, nn.MaxPool2d) and not shared:
            h = module(h.flatten(0, 1)).unflatten(0, h.shape[:2])
        else:  # activations are elementwise; a pool before any layer sees the shared batch
            h = module(h)
    count = len(scales)
    ce = F.cross_entropy(h.flatten(0, 1), y.repeat(count), reduction="none").view(count, -1).mean(1)
    if model.l2:
        for name, p in params.items():
            if p.dim() >= 2:
                v, w = q[name], p.view(len(p), -1)
                inner = ((v.a @ w) * v.b).sum(1)
                ce = ce + model.l2 * (w.square().sum() + 2 * inner + v.a.square().sum(1) * v.b.square().sum(1))
    return ce


def _linear(params: Params, q: dict[str, Tangent], prefix: str, h: Tensor, shared: bool) -> Tensor:
    w, bias = params[f"{prefix}.weight"], params.get(f"{prefix}.bias")
    out = F.linear(h, w, bias)  # shared: computed once for all Q queries
    v = q[f"{prefix}.weight"]
    hb = (h @ v.b.T).T.unsqueeze(2) if shared else torch.bmm(h, v.b.unsqueeze(2))  # Q × N × 1
    out = torch.baddbmm(out.expand(len(v.a), *out.shape[-2:]), hb, v.a.unsqueeze(1))
    if bias is not None:
        out = out + q[f"{prefix}.bias"].unsqueeze(1)
    return out


def _conv2d(module: nn.Conv2d, params: Params, q: dict[str, Tangent], prefix: str, h: Tensor,
            shared: bool) -> Tensor:
    w, bias = params[f"{prefix}.weight"], params.get(f"{prefix}.bias")

    def conv(inp: Tensor, kernel: Tensor, b: Tensor | None = None, groups: int = 1) -> Tensor:
        return F.conv2d(inp, kernel, b, module.stride, module.padding, module.dilation, groups)

    v = q[f"{prefix}.weight"]
    count = len(v.a)
    kernels = v.b.view(count, *w.shape[1:])
    if shared:
        out = conv(h, w, bias).unsqueeze(0)
        single = conv(h, kernels)  # N × Q × H × W: every query's single-channel kernel at once
    else:
        out = conv(h.flatten(0, 1), w, bias).unflatten(0, h.shape[:2])
        single = conv(h.transpose(0, 1).flatten(1, 2), kernels, groups=count)  # N × Q × H × W
    out = out + single.transpose(0, 1).unsqueeze(2) * v.a.view(count, 1, -1, 1, 1)
    if bias is not None:
        out = out + q[f"{prefix}.bias"].view(count, 1, -1, 1, 1)
    return out
