"""The fused forward-mode pass: loss and K directional derivatives d_k = ∇L·v_k in one sweep.

    loss, d = directional(model, params, tangents, x, y)

Design (chosen over the alternatives because it was the fastest measured, see README
"Speed"): each layer computes its primal output h and the tangent dh of that output
together, as dual numbers, i.e. the derivative of s ↦ L(θ + s·v) at s = 0 where every layer
adds its own perturbation term. A weight's tangent enters in the form it was drawn in, so a
rank-1 tangent a·bᵀ costs (x·b)·aᵀ, never a dense product, and K tangents ride along one
primal pass as a leading dimension of dh (one matrix product for all of them). The generic
`torch.func.jvp` route (any model, dense tangents only) stays as the reference the tests
compare this with; where a model has no `stages()` the estimator uses that route instead.
Nothing is taped: each layer's input is dropped as soon as its output exists, so memory stays
flat with depth. A tangent on a layer's output (activity perturbation) is one more term
added to dh in the same loop: gradbench.estimators.activities.

Rules: Linear, Conv2d (groups 1), the activations of gradbench.estimators.manual.DERIVATIVES (ReLU,
sigmoid, tanh, softplus), MaxPool2d, Flatten; loss = softmax cross-entropy + λ·Σ‖W‖². A model
with local losses takes the jvp route (its blocks' inputs are detached).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradbench.estimators.manual import DERIVATIVES
from gradbench.models import Model, Params
from gradbench.estimators.tangents import Rank1, Tangent

Dual = tuple[Tensor, Tensor | None]  # (primal N × ..., tangent K × N × ... or None = zero)


def supports(model: Model) -> bool:
    """True if every stage of `model` has a rule here and its loss is Model's own."""
    stages = model.stages()
    return (stages is not None and type(model).loss is Model.loss and not model.local_losses
            and all(type(m) in RULES or type(m) in DERIVATIVES for _, m in stages))


def directional(model: Model, params: Params, tangents: dict[str, Tangent], x: Tensor,
                y: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, d): the batch loss and d_k = ∇L·v_k for each of the K tangents (a K-vector)."""
    h, dh = x, None
    for prefix, module in model.stages():
        rule = RULES.get(type(module))
        if rule is not None:
            h, dh = rule(module, prefix, params, tangents, h, dh)
        else:  # an activation: dh ← dh ⊙ σ'(h), in place (dh is always a fresh tensor here)
            a = module(h)
            if dh is not None:
                dh = dh.mul_(DERIVATIVES[type(module)](module, h, a))
            h = a
    return _cross_entropy(model, params, tangents, h, dh, y)


def _linear(module: nn.Linear, prefix: str, params: Params, tangents: dict[str, Tangent],
            h: Tensor, dh: Tensor | None) -> Dual:
    w, b = params[f"{prefix}.weight"], params.get(f"{prefix}.bias")
    out = F.linear(h, w, b)
    # ∂(h Wᵀ + b) = dh Wᵀ + h dWᵀ + db; K × N × in @ in × out is one matrix product
    d = dh @ w.T if dh is not None else None
    vw = tangents[f"{prefix}.weight"]
    if isinstance(vw, Rank1):  # h (a bᵀ)ᵀ = (h b) aᵀ: a K × N × 1 by K × 1 × out outer product
        hb = (h @ vw.b.T).T.unsqueeze(2)
        d = torch.bmm(hb, vw.a.unsqueeze(1)) if d is None else d.baddbmm_(hb, vw.a.unsqueeze(1))
    else:
        term = torch.matmul(h, vw.transpose(1, 2))  # K dense tangents: K × N × out
        d = term if d is None else d.add_(term)
    if b is not None:
        d = d.add_(tangents[f"{prefix}.bias"].unsqueeze(1))
    return out, d


def _conv2d(module: nn.Conv2d, prefix: str, params: Params, tangents: dict[str, Tangent],
            h: Tensor, dh: Tensor | None) -> Dual:
    w, b = params[f"{prefix}.weight"], params.get(f"{prefix}.bias")

    def conv(inp: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(inp, kernel, bias, module.stride, module.padding, module.dilation, module.groups)

    out = conv(h, w, b)
    vw = tangents[f"{prefix}.weight"]
    k = len(vw.a) if isinstance(vw, Rank1) else len(vw)
    d = conv(dh.flatten(0, 1), w).unflatten(0, (k, len(h))) if dh is not None else None
    if isinstance(vw, Rank1):  # a kernel a ⊗ b: conv with the single-channel kernel b, times a
        single = conv(h, vw.b.view(k, *w.shape[1:])).transpose(0, 1).unsqueeze(2)  # K × N × 1 × H × W
        scale = vw.a.view(k, 1, -1, 1, 1)
        d = single * scale if d is None else d.addcmul_(single, scale)
    else:  # K dense kernels as one conv of K·out output channels
        term = conv(h, vw.flatten(0, 1)).unflatten(1, (k, w.shape[0])).transpose(0, 1)
        d = term.contiguous() if d is None else d.add_(term)
    if b is not None:
        d = d.add_(tangents[f"{prefix}.bias"].view(k, 1, -1, 1, 1))
    return out, d


def _max_pool(module: nn.MaxPool2d, prefix: str, params: Params, tangents: dict[str, Tangent],
              h: Tensor, dh: Tensor | None) -> Dual:
    out, idx = F.max_pool2d(h, module.kernel_size, module.stride, module.padding, module.dilation,
                            module.ceil_mode, return_indices=True)
    if dh is None:
        return out, None
    # the tangent of a max is the tangent of the entry that won (the same index torch's jvp uses)
    flat_idx = idx.flatten(2).expand(len(dh), -1, -1, -1)
    return out, dh.flatten(3).gather(3, flat_idx).view(len(dh), *out.shape)


def _flatten(module: nn.Flatten, prefix: str, params: Params, tangents: dict[str, Tangent],
             h: Tensor, dh: Tensor | None) -> Dual:
    return h.flatten(module.start_dim), None if dh is None else dh.flatten(module.start_dim + 1)


RULES: dict[type, Callable[..., Dual]] = {nn.Linear: _linear, nn.Conv2d: _conv2d,
                                          nn.MaxPool2d: _max_pool, nn.Flatten: _flatten}


def _cross_entropy(model: Model, params: Params, tangents: dict[str, Tangent], logits: Tensor,
                   dlogits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy + λ·Σ‖W‖², and its directional derivatives: ∂CE/∂logits =
    (softmax − onehot)/N contracted with each tangent of the logits; ∂(λ‖W‖²) = 2λ⟨W, v_W⟩,
    which for v_W = a bᵀ is 2λ·aᵀ W b."""
    log_p = logits.log_softmax(1)
    loss = F.nll_loss(log_p, y)
    slope = log_p.exp_()
    slope[torch.arange(len(y), device=y.device), y] -= 1
    d = dlogits.flatten(1) @ slope.flatten().div_(len(y))
    if model.l2:
        loss = loss + model.penalty(params)
        for name, p in params.items():
            if p.dim() >= 2:
                v = tangents[name]
                inner = (((v.a @ p.view(len(p), -1)) * v.b).sum(1) if isinstance(v, Rank1)
                         else (v.flatten(1) @ p.flatten()))
                d = d + 2 * model.l2 * inner
    return loss, d
