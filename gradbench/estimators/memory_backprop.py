"""Backprop at matched memory: the exact gradient for less memory and more time.

The memory case for every backprop-free method is made against plain backprop; a fair one is
made against these (Panchal et al. 2025, arXiv 2506.21833):

- `BackwardCheckpoint` (activation checkpointing, Chen et al. 2016): the chain of layers is cut
  into segments; a segment keeps only its input during the forward pass and recomputes its
  activations when the backward pass reaches it (torch.utils.checkpoint, use_reentrant=False).
  `segments`: `sqrt` (about √L segments of about √L weight layers each: O(√L) memory for about
  one more forward pass), `per_block` (one segment per weight layer with its activation and
  pooling) or an integer N (N segments of as equal a number of weight layers as can be). The
  last segment is not checkpointed (the backward pass needs its activations at once), as in
  torch.utils.checkpoint.checkpoint_sequential.
- `BackwardAccumulate` (gradient accumulation): the batch cut into `micro_batches` parts
  (sizes differing by at most one), one forward and backward per part, the gradients summed
  with weights n_i / n. The objective is a mean over examples (plus a penalty that does not
  depend on them), so Σ (n_i/n) ∇L_i = ∇L: the full-batch gradient, to rounding. Peak memory
  is one micro-batch's activations, the gradient buffer, and one layer's gradient on its way
  into it (backward() accumulates in place): below backprop's where activations dominate
  (large batches), above it by that one layer where the gradient does (small ones).

Both give backprop's gradient to float rounding: the same products, summed in another order
(accumulation) or recomputed bit for bit (checkpointing).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gradbench.errors import ConfigError, require
from gradbench.estimators.base import Estimator, Passes
from gradbench.models import Model, Objective, Params, run_stages

SEGMENTS = ("sqrt", "per_block")


def valid_segments(v) -> bool:
    return v in SEGMENTS or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


class BackwardCheckpoint(Estimator):
    """Backprop with activation checkpointing: the exact gradient, activations kept per segment."""

    def __init__(self, segments: str | int = "sqrt", generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(valid_segments(segments), "estimator.segments", f"must be {' | '.join(SEGMENTS)} or an integer >= 1",
                segments)
        self.segments = segments

    def bind(self, model: Model) -> None:
        stages = model.stages()
        if stages is None:
            raise ConfigError(f"estimator=backward_checkpoint needs a chain of layers (model=mlp | logreg | cnn | "
                              f"cnn_paper), got {type(model).__name__}: use estimator=backward")
        if model.local_losses:
            raise ConfigError("estimator=backward_checkpoint checkpoints the network's own chain; with "
                              "model.local_losses=true use estimator=backward (each block's graph is already local)")
        self.parts = cut(stages, self.segments)

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
        with torch.enable_grad():
            h = objective.x
            for i, part in enumerate(self.parts):
                if i < len(self.parts) - 1:
                    h = checkpoint(run_stages, part, leaves, h, use_reentrant=False)
                else:
                    h = run_stages(part, leaves, h)
            loss = objective.model.loss(h, objective.y, leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), dict(zip(params, grads))

    def passes(self, model: Model) -> Passes:
        # the checkpointed segments' forward pass runs twice: their share of the weight layers
        parts = cut(model.stages(), self.segments)
        layers = [sum(isinstance(m, (nn.Linear, nn.Conv2d)) for _, m in part) for part in parts]
        return Passes(forward=1 + sum(layers[:-1]) / sum(layers), backward=1)


def cut(stages: list[tuple[str, nn.Module]], segments: str | int) -> list[list[tuple[str, nn.Module]]]:
    """The chain cut into segments at block boundaries (a block: a weight layer with the
    activation and pooling after it; a leading Flatten joins the next block)."""
    blocks: list[list] = []
    for prefix, module in stages:
        if isinstance(module, (nn.Linear, nn.Conv2d)) and blocks and any(
                isinstance(m, (nn.Linear, nn.Conv2d)) for _, m in blocks[-1]):
            blocks.append([])
        elif not blocks:
            blocks.append([])
        blocks[-1].append((prefix, module))
    count = len(blocks) if segments == "per_block" else \
        max(1, round(math.sqrt(len(blocks)))) if segments == "sqrt" else min(segments, len(blocks))
    bounds = [round(i * len(blocks) / count) for i in range(count + 1)]
    return [sum(blocks[a:b], []) for a, b in zip(bounds, bounds[1:])]


class BackwardAccumulate(Estimator):
    """Backprop over `micro_batches` parts of the batch, gradients weighted by the parts' sizes."""

    def __init__(self, micro_batches: int = 4, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        require(isinstance(micro_batches, int) and micro_batches >= 1, "estimator.micro_batches",
                "must be an integer >= 1", micro_batches)
        self.micro_batches = micro_batches

    def __call__(self, objective: Objective, params: Params) -> tuple[Tensor, Params]:
        leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
        x, y = objective.x, objective.y
        n = len(x) if x is not None and x.dim() > 0 else 0
        if n == 0:  # a model without data (a test function): one part, the whole objective
            parts = [(x, y, 1.0)]
        else:
            xs = torch.tensor_split(x, min(self.micro_batches, n))
            ys = torch.tensor_split(y, len(xs)) if y is not None else [None] * len(xs)
            parts = [(a, b, len(a) / n) for a, b in zip(xs, ys)]
        loss = 0.0
        with torch.enable_grad():
            for part_x, part_y, weight in parts:
                # backward() adds each part's gradient into the leaves' .grad in place, one layer
                # at a time: one gradient buffer in memory, as backprop's, not an accumulator
                # beside each part's gradient (torch.autograd.grad would return new tensors)
                part_loss = weight * objective.model.objective(leaves, part_x, part_y)
                part_loss.backward()
                loss = loss + part_loss.detach()
        return loss, {k: torch.zeros_like(p) if leaves[k].grad is None else leaves[k].grad for k, p in params.items()}

    def passes(self, model: Model) -> Passes:
        return Passes(forward=1, backward=1)  # the same passes over the batch, in parts
