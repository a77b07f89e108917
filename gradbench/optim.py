"""Update rules and schedules that torch.optim lacks."""

from __future__ import annotations

import math

import torch

from gradbench.errors import require


def exponential_decay(optimizer: torch.optim.Optimizer, rate: float) -> torch.optim.lr_scheduler.LRScheduler:
    """lr_i = lr_0 · exp(−rate · i), stepped once per update: torch's ExponentialLR, γ = e^(−rate)."""
    require(rate >= 0, "schedule.rate", "must be >= 0", rate)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=math.exp(-rate))
