"""How many CPU threads torch uses for a run: `threads: auto | N | null`.

Measured on a 2-core CPU (README, "Threads"; `make threads`): a second thread gains nothing
for a step whose forward pass costs under a few MFLOPs (penguins: ≤ 0.3 MFLOP), gains 1.6–1.9×
from 15 MFLOPs on (MNIST MLP and CNNs) on an idle machine, and always loses when another
process holds a core: each step then waits for its slowest thread (up to 3× slower on MNIST,
up to 50× on a tiny step). So `auto` takes
- one thread when one forward pass of a training batch costs less than AUTO_MIN_FLOPS;
- else torch's default capped at the cores idle right now (sampled over IDLE_SAMPLE_S from
  /proc/stat; where that is missing, torch's default);
- torch's default on a GPU (the CPU only feeds the device).
In a parallel sweep (joblib), torch's default in a worker is already cores / n_jobs: joblib
sets each worker's thread limits. The choice is made once, at the start of the run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

# torch's own choice for this process (OMP_NUM_THREADS, joblib's worker limits), before any run sets it
TORCH_DEFAULT = torch.get_num_threads()
# Forward FLOPs of one training batch from which a second thread pays off on an idle machine:
# between the largest measured workload that gained nothing (0.32 MFLOP) and the smallest that
# gained (15.5 MFLOP), on a log scale (README, "Threads").
AUTO_MIN_FLOPS = 2e6
IDLE_SAMPLE_S = 0.2


def forward_flops(loss_of_one_batch) -> int:
    """FLOPs torch counts for one call (matrix products and convolutions: the work threads split)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss_of_one_batch()
    return counter.get_total_flops()


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return values[3] + values[4], sum(values[:8])  # idle + iowait; user … steal


def idle_cores(interval: float = IDLE_SAMPLE_S) -> float | None:
    """How many of this process's cores were idle over the last `interval` seconds, or None."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(interval)
    after = _cpu_times()
    busy_total = after[1] - before[1]
    if busy_total <= 0:
        return None
    return (after[0] - before[0]) / busy_total * (os.cpu_count() or 1)


def choose(setting, device: torch.device, step_flops) -> int:
    """The thread count for `threads: setting` (null = torch's default, N, or auto, which calls
    `step_flops()` for the forward FLOPs of one training batch)."""
    if setting is None:
        return TORCH_DEFAULT
    if setting != "auto":
        return int(setting)
    if device.type != "cpu":
        return TORCH_DEFAULT
    if step_flops() < AUTO_MIN_FLOPS:
        return 1
    idle = idle_cores()
    return TORCH_DEFAULT if idle is None else max(1, min(TORCH_DEFAULT, round(idle)))


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
