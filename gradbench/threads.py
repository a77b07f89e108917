"""How many CPU threads torch uses for a run: `threads: auto | N | null`.

torch's default (one thread per physical core) helps only when a step has enough work to
split: a small model on a few hundred examples spends its step waking threads, and when
another process holds a core, each step waits for the slowest thread (README, "Threads":
the measurements behind this rule). `auto` therefore takes one thread when one forward pass
of a training batch costs less than `AUTO_MIN_FLOPS`, and torch's default otherwise; a GPU run
keeps torch's default (the CPU only feeds the device). In a parallel sweep (joblib), torch's
default in a worker is already cores / n_jobs: joblib sets each worker's thread limits.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

# torch's own choice for this process (OMP_NUM_THREADS, joblib's worker limits), before any run sets it
TORCH_DEFAULT = torch.get_num_threads()
# Forward FLOPs of one training batch from which all threads pay off (README, "Threads").
AUTO_MIN_FLOPS = 2e7


def forward_flops(loss_of_one_batch) -> int:
    """FLOPs torch counts for one call (matrix products and convolutions: the work threads split)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss_of_one_batch()
    return counter.get_total_flops()


def choose(setting, device: torch.device, step_flops) -> int:
    """The thread count for `threads: setting` (null = torch's default, N, or auto, which calls
    `step_flops()` for the forward FLOPs of one training batch)."""
    if setting is None:
        return TORCH_DEFAULT
    if setting != "auto":
        return int(setting)
    if device.type != "cpu":
        return TORCH_DEFAULT
    return TORCH_DEFAULT if step_flops() >= AUTO_MIN_FLOPS else 1


@contextlib.contextmanager
def background_load(processes: int):
    """`processes` CPU-bound processes running while the block runs (bench.load: timings under
    the load a shared machine or a second job puts on it); stopped on the way out."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in busy:
            p.kill()
            p.wait()
