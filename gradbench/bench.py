"""`gradbench bench [overrides]`: time the estimate + update of several estimators side by side.

    gradbench bench model=cnn dataset=mnist bench.batch_sizes=[64,500]
    gradbench bench model=mlp model.hidden=[1024,1024] bench.estimators=[backward,forward] device=cuda

On one batch of the training split, at the seed's initial parameters, each estimator in
`bench.estimators` runs `bench.steps` timed steps (estimate + optimizer update, device-synchronised,
after one untimed warm-up) in turn, for `bench.rounds` interleaved rounds, so drift in machine
load hits every estimator alike. Parameters are reset before each round. Reported per
estimator and batch size: the median step time, its spread (interquartile range), the ratio to
the first estimator's median (the figure to quote: measured side by side in one run) and, on
CUDA, the peak memory one step allocates beyond the resident data and parameters.
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from gradbench.check import catalogue
from gradbench.data import batches
from gradbench.errors import require
from gradbench.job import build, setup, stream
from gradbench.models import Objective
from gradbench.train import synchroniser

COLUMNS = ["estimator", "batch_size", "median_step_s", "iqr_step_s", "ratio", "peak_memory_mb"]


def bench_job(cfg: DictConfig, run_dir: Path) -> None:
    """Time every estimator of `cfg.bench` into `run_dir/bench.csv` and print the table."""
    b = cfg.bench
    require(len(b.estimators) >= 1, "bench.estimators", "must name at least one estimator", list(b.estimators))
    require(b.rounds >= 1 and b.steps >= 1, "bench.rounds/steps", "must be >= 1", (b.rounds, b.steps))
    options = catalogue(cfg)  # every estimator option, the selected one with the run's overrides
    unknown = [name for name in b.estimators if name not in options]
    require(not unknown, "bench.estimators", f"must be options of conf/estimator ({' | '.join(options)})", unknown)
    nodes = {name: options[name] for name in b.estimators}
    s = setup(cfg)
    start = {k: p.clone() for k, p in s.params.items()}
    sync = synchroniser(s.device)
    rows = []
    for size in b.batch_sizes or [cfg.batch_size]:
        n = len(s.data.train)
        require(size is None or 1 <= size <= n, "bench.batch_sizes", f"must be in 1..{n} or null", size)
        batch = s.data.train.take(next(batches(n, size or n, stream(cfg.seed, "batches"), s.device)))
        objective = Objective(s.model, batch.x, batch.y)
        runners = {}
        for name, node in nodes.items():
            estimator = build(node, "estimator", generator=stream(cfg.seed, "tangents", s.device))
            estimator.bind(s.model)
            optimizer = build(cfg.optimizer, "optimizer", params=list(s.params.values()))
            runners[name] = (estimator, optimizer)
        times: dict[str, list[float]] = {name: [] for name in runners}
        memory: dict[str, float | None] = {}
        for _ in range(b.rounds):
            for name, (estimator, optimizer) in runners.items():
                _reset(s.params, start)
                memory[name] = _step_memory(estimator, optimizer, objective, s.params, s.device)
                for _ in range(b.steps):
                    sync()
                    t0 = time.perf_counter()
                    _step(estimator, optimizer, objective, s.params)
                    sync()
                    times[name].append(time.perf_counter() - t0)
        base = statistics.median(times[next(iter(times))])
        for name, values in times.items():
            q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
            median = statistics.median(values)
            rows.append({"estimator": name, "batch_size": size or n, "median_step_s": median,
                         "iqr_step_s": q3 - q1, "ratio": median / base, "peak_memory_mb": memory[name]})
    _reset(s.params, start)
    with open(run_dir / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{s.device}, {b.rounds} rounds × {b.steps} steps each, ratio = median / {b.estimators[0]}'s median")
    print(format_table(rows))


def _step(estimator, optimizer, objective: Objective, params) -> None:
    """The timed unit, as in training: one estimate, then one update."""
    _, grads = estimator(objective, params)
    for name, p in params.items():
        p.grad = grads[name]
    optimizer.step()


def _step_memory(estimator, optimizer, objective, params, device: torch.device) -> float | None:
    """One untimed warm-up step; on CUDA, the peak memory it allocates above what was resident."""
    if device.type != "cuda":
        _step(estimator, optimizer, objective, params)
        return None
    torch.cuda.synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _step(estimator, optimizer, objective, params)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - resident) / 2**20


@torch.no_grad()
def _reset(params, start) -> None:
    for name, p in params.items():
        p.copy_(start[name])
        p.grad = None


def format_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(cell(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)
