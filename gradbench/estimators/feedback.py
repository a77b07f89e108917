"""Feedback alignment: a backward pass through fixed random matrices instead of the weights.

- FA (Lillicrap et al. 2016): layer l's error goes to its input through a fixed random B_l of
  W_l's shape (δ_in = δ_out·B_l where backprop has δ_out·W_l); a conv layer's through a fixed
  random kernel of W_l's shape (the transposed convolution with B_l instead of W_l). Each
  weight's own gradient is backprop's formula (δ_out ⊗ input), so with B_l = W_l FA *is*
  backprop (tests/test_feedback.py checks that to the last bit).
- DFA (Nøkland 2016): the output error e = ∂L/∂logits goes straight to every hidden layer's
  output h_l (the input of weight layer l+1: after the activation, pooling, flattening)
  through a fixed random B_l (classes × that output's size per example): ∂L/∂h_l := e·B_l,
  then back through the layer's own activation and weight by autograd (no further layer is
  crossed). The output layer gets the true gradient. Conv layers are covered the same way:
  their whole feature map is the "hidden output" (Nøkland's convolutional DFA).

Both are biased by design (E g ≠ ∇L; no closed-form error: `spread` is None, `gradbench check`
prints the measured cosine with ∇L). B is drawn once (FA: in `bind`; DFA: at its first call,
where the hidden outputs' sizes are known) from the estimator's seeded generator (the run's "tangents" stream, which FA/DFA use for nothing else), each entry
U(−1/√fan_in, 1/√fan_in): the scale of PyTorch's default init of the weight it replaces
(fan_in of B_l: W_l's input size for FA, the number of classes for DFA). `state_dict` hands
the matrices to the checkpoint, `load_state_dict` restores them: a resumed run continues
with the very same ones, and they are not part of model.pt.

Models: chains of Linear / Conv2d layers (`Model.stages`: MLP, logreg, CNN), without local
losses (their heads' gradients stop at each block; FA/DFA define another signal).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from gradbench.errors import ConfigError
from gradbench.estimators.base import Estimator, Passes
from gradbench.models import Model, Objective, Params

WEIGHTED = (nn.Linear, nn.Conv2d)


class _FALinear(torch.autograd.Function):
    """y = x Wᵀ + b; backward: ∂x = δ B (B in W's place), ∂W = δᵀ x, ∂b = Σ δ."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, feedback = ctx.saved_tensors
        grad_x = grad @ feedback if ctx.needs_input_grad[0] else None
        grad_w = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class _FAConv2d(torch.autograd.Function):
    """y = conv(x, W) + b; backward: ∂x = conv_transpose(δ, B) (B in W's place), ∂W and ∂b as backprop."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, conv: tuple) -> Tensor:
        ctx.save_for_backward(x, feedback)
        ctx.conv, ctx.has_bias, ctx.weight_shape = conv, bias is not None, weight.shape
        return F.conv2d(x, weight, bias, *conv)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, feedback = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad_x = conv2d_input(x.shape, feedback, grad, stride, padding, dilation, groups) \
            if ctx.needs_input_grad[0] else None
        grad_w = conv2d_weight(x, ctx.weight_shape, grad, stride, padding, dilation, groups)
        grad_b = grad.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


def weight_layers(model: Model, method: str) -> list[tuple[int, str, nn.Module]]:
    """(stage index, prefix, layer) of every Linear / Conv2d of the chain; a ConfigError for a
    model FA / DFA cannot run (no chain, local losses, another layer with parameters)."""
    stages = model.stages()
    if stages is None:
        raise ConfigError(f"estimator={method} needs a chain of Linear / Conv2d layers (model=mlp | logreg | cnn "
                          f"| cnn_paper), got {type(model).__name__}")
    if model.local_losses:
        raise ConfigError(f"estimator={method} sends its own error signal to every layer; model.local_losses=true "
                          "defines another one: use model.local_losses=false")
    layers = [(i, prefix, m) for i, (prefix, m) in enumerate(stages) if isinstance(m, WEIGHTED)]
    other = [prefix for prefix, m in stages if not isinstance(m, WEIGHTED) and any(True for _ in m.parameters())]
    if other or not layers:
        raise ConfigError(f"estimator={method} handles Linear / Conv2d layers only (parameters in {other})")
    return layers


def draw(shape: tuple[int, ...], fan_in: int, like: Tensor, generator: torch.Generator) -> Tensor:
    """A fixed feedback matrix: U(−1/√fan_in, 1/√fan_in) entries, on the generator's device."""
    bound = 1 / math.sqrt(fan_in)
    out = torch.empty(shape, dtype=like.dtype, device=generator.device)
    return out.uniform_(-bound, bound, generator=generator).to(like.device)


class _Feedback(Estimator):
    """Shared: the fixed matrices (one per layer prefix), their checkpoint round trip."""

    biased = True  # a deterministic estimate that is not ∇L: `gradbench check` shows its cosine, no verdict
    method = ""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.feedback: dict[str, Tensor] = {}

    def state_dict(self) -> dict[str, Tensor]:
        return {f"feedback.{k}": v for k, v in self.feedback.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """The matrices a checkpoint stored (the very ones: a resumed run continues with them)."""
        mine = self.state_dict()
        if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
            raise ValueError(f"feedback matrices {sorted(state)} do not fit this model's {sorted(mine)}")
        with torch.no_grad():
            for k, v in self.feedback.items():
                v.copy_(state[f"feedback.{k}"])

    def passes(self, model: Model) -> Passes:
        return Passes(forward=1, backward=1)


def _leaves(params: Params) -> Params:
    return {k: p.detach().requires_grad_(True) for k, p in params.items()}


class FeedbackAlignment(_Feedback):
    """FA: the backward pass of every weight layer but the first through its fixed random B_l."""

    method = "feedback_alignment"

    def bind(self, model: Model) -> None:
        self.layers, self.stages = weight_layers(model, self.method), model.stages()
        generator = self.generator if self.generator is not None else torch.Generator().manual_seed(0)
        # the first layer's input is the data: no error goes through it, so it needs no B
        self.feedback = {prefix: draw(tuple(m.weight.shape), m.weight[0].numel(), m.weight, generator)
                         for _, prefix, m in self.layers[1:]}

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        leaves = _leaves(params)
        with torch.enable_grad():
            outputs = run(self.stages, leaves, objective.x, self.feedback)
            loss = objective.model.loss(outputs, objective.y, leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), dict(zip(params, grads))


def run(stages, params: Params, h: Tensor, feedback: dict[str, Tensor]) -> Tensor:
    """The chain's forward pass; a layer with a feedback matrix runs as its FA Function."""
    for prefix, module in stages:
        if isinstance(module, WEIGHTED) and prefix in feedback:
            w, b, fb = params[f"{prefix}.weight"], params.get(f"{prefix}.bias"), feedback[prefix]
            if isinstance(module, nn.Linear):
                h = _FALinear.apply(h, w, b, fb)
            else:
                h = _FAConv2d.apply(h, w, b, fb, (module.stride, module.padding, module.dilation, module.groups))
        else:
            h = _apply(module, prefix, params, h)
    return h


class DirectFeedbackAlignment(_Feedback):
    """DFA: the output error e to every hidden layer's output through its fixed random B_l.
    The hidden outputs' sizes depend on the input's (a conv net's feature maps), so the
    matrices are drawn at the first call, from the first example's pass (or restored from a
    checkpoint before it)."""

    method = "direct_feedback_alignment"

    def bind(self, model: Model) -> None:
        self.layers, self.stages, self.feedback = weight_layers(model, self.method), model.stages(), {}
        self.cuts = {i: prefix for i, prefix, _ in self.layers[1:]}  # hidden output = input of a later weight layer

    def _draw(self, params: Params, x: Tensor) -> None:
        classes = params[f"{self.layers[-1][1]}.weight"].shape[0]
        generator = self.generator if self.generator is not None else torch.Generator().manual_seed(0)
        h, feedback = x[:1], {}
        with torch.no_grad():
            for i, (prefix, module) in enumerate(self.stages):
                if i in self.cuts:
                    feedback[self.cuts[i]] = draw((classes, h[0].numel()), classes, x, generator)
                h = _apply(module, prefix, params, h)
        self.feedback = feedback

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        names = {f"feedback.{p}" for p in self.cuts.values()}
        if set(state) != names or any(v.dim() != 2 for v in state.values()):
            raise ValueError(f"feedback matrices {sorted(state)} do not fit this model's {sorted(names)}")
        if not self.feedback:  # not drawn yet: the stored ones are the run's
            self.feedback = {k.removeprefix("feedback."): v.clone() for k, v in state.items()}
            return
        super().load_state_dict(state)

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        if not self.feedback and self.cuts:
            self._draw(params, objective.x)
        leaves = _leaves(params)
        with torch.enable_grad():
            h, hidden = objective.x, []
            for i, (prefix, module) in enumerate(self.stages):
                if i in self.cuts:  # h is a hidden layer's output: keep it, and cut the chain here
                    hidden.append((self.cuts[i], h))
                    h = h.detach()
                h = _apply(module, prefix, leaves, h)
            loss = objective.model.loss(h, objective.y, leaves)
            error = torch.autograd.grad(loss, h, retain_graph=True)[0]  # e = ∂L/∂logits
            # one backward of a surrogate whose gradient is DFA's: the loss itself for the output
            # layer (and the penalty), ⟨h_l, e·B_l⟩ for each hidden output (its input cut off)
            surrogate = loss
            for prefix, out in hidden:
                signal = (error @ self.feedback[prefix].to(error)).view_as(out)
                surrogate = surrogate + (out * signal).sum()
            grads = torch.autograd.grad(surrogate, list(leaves.values()), allow_unused=True)
        return loss.detach(), {k: torch.zeros_like(p) if g is None else g
                               for (k, p), g in zip(params.items(), grads)}


def _apply(module: nn.Module, prefix: str, params: Params, h: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(h, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"))
    if isinstance(module, nn.Conv2d):
        return F.conv2d(h, params[f"{prefix}.weight"], params.get(f"{prefix}.bias"), module.stride,
                        module.padding, module.dilation, module.groups)
    return module(h)
