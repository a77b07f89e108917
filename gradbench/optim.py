"""Update rules and schedules that torch.optim lacks: hand-written SGD, Nesterov/FISTA, decay.

Every optimizer here is a real `torch.optim.Optimizer`: it reads the gradient estimate from
`.grad` (whichever estimator produced it) and its step size from `param_groups[i]["lr"]`, so
torch's learning-rate schedulers (conf/schedule/) drive it like any built-in optimizer.

    gradbench train optimizer=manual_sgd +optimizer/preset=r001_m4   # report 001, model 4
    gradbench train optimizer=nag optimizer.lr=0.01                  # report 003
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from gradbench.errors import require
from gradbench.estimators.tangents import Estimate, dense


class ManualSGD(torch.optim.Optimizer):
    """SGD with momentum, weight decay and optional Nesterov momentum, written out by hand
    (report 001's "manual update"); no torch.optim update code runs inside.

    The equations are torch.optim.SGD's with dampening 0, in the same operation order as its
    for-loop path (`_single_tensor_sgd`), so the float results are bit-identical:

        d ← g + wd·θ                                  (if wd ≠ 0)
        b ← d (first step),  b ← μ·b + d (later)     (if μ ≠ 0)
        d ← d + μ·b (nesterov),  d ← b (otherwise)    (if μ ≠ 0)
        θ ← θ − lr·d
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        require(lr > 0, "optimizer.lr", "must be > 0", lr)
        require(momentum >= 0, "optimizer.momentum", "must be >= 0", momentum)
        require(weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", weight_decay)
        require(not nesterov or momentum > 0, "optimizer.nesterov", "needs optimizer.momentum > 0", nesterov)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(self._direction(p, mu, wd, group["nesterov"]), alpha=-lr)
        return loss

    def _direction(self, p: Tensor, mu: float, wd: float, nesterov: bool) -> Tensor:
        """The step direction d for one parameter (updates its momentum buffer)."""
        d = p.grad
        if wd != 0:
            d = d.add(p, alpha=wd)  # one fused op, as torch does: g + wd·θ rounded once
        if mu == 0:
            return d
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            # b_1 = d_1, not μ·0 + d_1: the same value, but torch copies, so we copy too.
            buf = state["momentum_buffer"] = d.detach().clone()
        else:
            buf.mul_(mu).add_(d)  # dampening 0: (1 − 0)·d, and 1·d is exact
        return d.add(buf, alpha=mu) if nesterov else buf


class NAG(torch.optim.Optimizer):
    """Nesterov's accelerated gradient with the FISTA momentum schedule (report 003).

    Nesterov 1983, in the form of Beck & Teboulle 2009 (FISTA without the proximal step).
    The parameters hold the look-ahead point y_k, so whichever estimator runs evaluates the
    gradient there, as the grader's correction to report 003 demands (the report had used
    the gradient at x_k). With g = ∇f(y_k) read from `.grad`:

        x_{k+1} = y_k − lr·g
        t_{k+1} = (1 + sqrt(1 + 4·t_k²)) / 2
        y_{k+1} = x_{k+1} + ((t_k − 1) / t_{k+1}) · (x_{k+1} − x_k)

    starting from x_1 = y_1 = the initial parameters and t_1 = 1 (so the first step is a plain
    gradient step). State per parameter: `x` (x_k) and `t` (t_k). For convex f with an
    L-Lipschitz gradient and lr ≤ 1/L, after k steps f(x_{k+1}) − f* ≤ 2‖x_1 − x*‖² / (lr·(k+1)²)
    (FISTA, Thm. 4.4), against ‖x_1 − x*‖² / (2·lr·k) for gradient descent. Metrics of a run
    are measured at the parameters, i.e. at the look-ahead point y.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3) -> None:
        require(lr > 0, "optimizer.lr", "must be > 0", lr)
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            for y in group["params"]:
                if y.grad is None:
                    continue
                state = self.state[y]
                if not state:
                    state["x"], state["t"] = y.detach().clone(), 1.0  # x_1 = y_1, t_1 = 1
                t = state["t"]
                t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
                x_next = y.add(y.grad, alpha=-group["lr"])
                y.copy_(x_next).add_(x_next - state["x"], alpha=(t - 1) / t_next)
                state["x"], state["t"] = x_next, t_next
        return loss


class SignSGD(torch.optim.Optimizer):
    """Sign descent, with momentum (signSGD / Signum, Bernstein et al. 2018; ZO-Bench's ZO-Sign
    when the estimate is zeroth-order): only the sign of each entry moves θ, so a noisy
    estimate's scale does not matter, only which way each coordinate points.

        m ← g (μ = 0),  m ← μ·m + (1 − μ)·g (μ > 0, m₀ = 0)
        θ ← θ − lr·sign(m)

    sign(0) = 0: an entry with no signal does not move.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.0) -> None:
        require(lr > 0, "optimizer.lr", "must be > 0", lr)
        require(0 <= momentum < 1, "optimizer.momentum", "must be in [0, 1)", momentum)
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = p.grad
                if mu:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    m = state["momentum_buffer"].mul_(mu).add_(p.grad, alpha=1 - mu)
                p.add_(m.sign(), alpha=-lr)
        return loss


def apply(optimizer: torch.optim.Optimizer, params: dict[str, Tensor], grads: dict[str, Estimate]) -> None:
    """One update from an estimate, dense or factored (gradbench.estimators.tangents.LowRank).

    A plain SGD step (torch's SGD or ManualSGD without momentum, weight decay or Nesterov)
    applies a factored estimate as θ ← θ − lr·Σ_k u_k w_kᵀ in one addmm_, never forming the
    dense matrix, and a seeded one (zeroth-order replay) by regenerating each tensor's
    directions chunk by chunk, never holding one whole; every other optimizer gets dense `.grad`s and steps as usual. `.grad` is
    cleared afterwards, so no estimate is held between steps.
    """
    if any(not isinstance(g, Tensor) for g in grads.values()) and _plain_sgd(optimizer):
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            for name, p in params.items():
                g = grads[name]
                if not isinstance(g, Tensor):  # LowRank, or seeded.Seeded (regenerated here)
                    g.add_to(p, -lr_of[id(p)])
                else:
                    p.add_(g, alpha=-lr_of[id(p)])
        optimizer._opt_called = True  # what torch's own step marks, so its scheduler sees a step
        return
    for name, p in params.items():
        p.grad = dense(grads[name])
    optimizer.step()
    for p in params.values():
        p.grad = None


def _plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """θ ← θ − lr·g and nothing else: no state, so an update may take g in any form."""
    return type(optimizer) in (torch.optim.SGD, ManualSGD) and all(
        g["momentum"] == 0 and g["weight_decay"] == 0 and not g["nesterov"] and not g.get("maximize", False)
        for g in optimizer.param_groups)


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """torch.optim's contract: if given a closure, re-evaluate the loss with autograd on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def exponential_decay(optimizer: torch.optim.Optimizer, rate: float) -> torch.optim.lr_scheduler.LRScheduler:
    """lr_i = lr_0 · exp(−rate · i), stepped once per update: torch's ExponentialLR, γ = e^(−rate)."""
    require(rate >= 0, "schedule.rate", "must be >= 0", rate)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=math.exp(-rate))


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: float = 0.05,
                  final: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over the first ⌈warmup·steps⌉ updates, then cosine decay to final·lr_0 at
    `steps` (Loshchilov & Hutter 2017, with the warm-up of Goyal et al. 2017; Ren et al. 2023's
    released code trains with it). The factor on lr_0 at update i (0-based, the rate update i uses):

        (i + 1) / w                                        i < w   (w = warm-up updates)
        final + (1 − final) · (1 + cos(π·(i − w)/(steps − w))) / 2    w ≤ i < steps
        final                                              i ≥ steps (a run longer than planned)
    """
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "schedule.steps",
            "must be a positive integer (the run's length: warmup_cosine needs max_steps)", steps)
    require(0 <= warmup < 1, "schedule.warmup", "must be a fraction in [0, 1)", warmup)
    require(0 <= final <= 1, "schedule.final", "must be in [0, 1]", final)
    w = math.ceil(warmup * steps)

    def factor(i: int) -> float:
        if i < w:
            return (i + 1) / w
        if i >= steps:
            return final
        return final + (1 - final) * (1 + math.cos(math.pi * (i - w) / (steps - w))) / 2

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
