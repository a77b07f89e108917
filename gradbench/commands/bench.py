"""`gradbench bench [overrides]`: time the estimate + update of several estimators side by side.

    gradbench bench +benchmark=paper_mlp          # the paper's MLP on MNIST, batch 64 and 1024
    gradbench bench model=cnn dataset=mnist bench.batch_sizes=[64,500]
    gradbench bench -m +benchmark=scaling_depth   # a sweep; then `gradbench bench-report DIR --x layers`

On one batch of the training split, at the seed's initial parameters, each estimator in
`bench.estimators` (options of conf/estimator/, or `bench.extra`) runs `bench.steps` timed
steps in turn (on the run's model, or on the model with `bench.models`' overrides for that
entry: local losses beside plain backprop, say), for `bench.rounds` interleaved rounds, so
drift in machine load hits every estimator alike; parameters are reset before each round. A step is `gradbench.run.train.Step`,
the very unit training times: estimate, update, scheduler step, device-synchronised, after
one untimed warm-up. Reported per estimator and batch size:
- median step time and its interquartile range;
- T_f, the median time of the plain loss evaluation (no derivative, no update), timed in the
  same rounds, and R = step / T_f: the paper's R_f (forward) and R_b (backward), shown beside
  `bench.paper_R` where a preset gives the paper's values;
- ratio: the median over the first estimator's median (the figure to quote);
- peak memory of one step above what was resident (data, parameters), the estimator's own
  buffers included: CUDA max_memory_allocated on a GPU; on the CPU the running sum of the
  profiler's allocation and free events, whose maximum is the peak;
- memory_ratio: that peak over the peak of one forward-only evaluation of the loss on the same
  batch (under torch.no_grad, the run's own model; eval_memory_mb, measured the same way): the
  memory a method needs beyond inference (1 = an evaluation's).
The thread count and device are recorded with every row.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch.profiler import ProfilerActivity, profile

from gradbench.run import files, threads
from gradbench.commands.check import catalogue
from gradbench.data import batches
from gradbench.errors import require
from gradbench.run.job import build, setup, stream, validate
from gradbench.models import Objective, count_parameters
from gradbench.run.threads import background_load
from gradbench.run.train import Step, synchroniser

PASSES = ["passes_forward", "passes_forward_mode", "passes_backward"]  # Estimator.passes: empty where not stated
COLUMNS = ["estimator", "batch_size", "device", "threads", "load", "auto_threads", "forward_flops", "num_params", "layers", "loss_eval_s", "median_step_s",
           "iqr_step_s", "R", "paper_R", "ratio", "peak_memory_mb", "eval_memory_mb", "memory_ratio", *PASSES]


def bench_job(cfg: DictConfig, run_dir: Path) -> None:
    """Time every estimator of `cfg.bench` into `run_dir/bench.csv` and print the table."""
    validate(cfg)
    b = cfg.bench
    require(len(b.estimators) >= 1, "bench.estimators", "must name at least one estimator", list(b.estimators))
    require(b.rounds >= 1 and b.steps >= 1, "bench.rounds/steps", "must be >= 1", (b.rounds, b.steps))
    require(len(b.threads) >= 1 and all(t is None or t == "auto" or (isinstance(t, int) and t >= 1) for t in b.threads),
            "bench.threads", "must be a non-empty list of thread counts, auto or null", list(b.threads))
    require(isinstance(b.load, int) and b.load >= 0, "bench.load", "must be an integer >= 0", b.load)
    options = catalogue(cfg, b.extra)  # every estimator option (the selected one with the run's overrides)
    unknown = [name for name in b.estimators if name not in options]
    require(not unknown, "bench.estimators", f"must be options of conf/estimator or bench.extra ({' | '.join(options)})", unknown)
    nodes = {name: options[name] for name in b.estimators}
    unknown = [name for name in b.models if name not in nodes]
    require(not unknown, "bench.models", "must name entries of bench.estimators", unknown)
    s = setup(cfg)
    variants = _variants(cfg, s)
    n = len(s.data.train)
    for size in b.batch_sizes:
        require(size is None or 1 <= size <= n, "bench.batch_sizes", f"must be in 1..{n} or null", size)
    layers = sum(p.dim() >= 2 for p in s.params.values())  # weight matrices and kernels
    fixed = {"device": str(s.device), "num_params": count_parameters(s.params), "layers": layers}
    rows, previous = [], torch.get_num_threads()
    try:
        with background_load(b.load):
            for size in b.batch_sizes:
                batch = s.data.train.take(next(batches(n, size or n, stream(cfg.seed, "batches"), s.device)))
                objective = Objective(s.model, batch.x, batch.y)
                objectives = {name: Objective(variants[name].model, batch.x, batch.y) for name in nodes}
                flops = threads.forward_flops(lambda: objective.loss(s.params))
                auto = threads.choose("auto", s.device, lambda: flops)  # once: it samples the idle cores
                settings = [cfg.threads if t is None else t for t in b.threads]  # null = the run's `threads`
                thread_counts = list(dict.fromkeys(auto if t == "auto" else threads.choose(t, s.device, lambda: flops)
                                                   for t in settings))
                rows += _time_batch(cfg, s, nodes, variants, objective, objectives, thread_counts,
                                    {**fixed, "batch_size": size or n, "forward_flops": flops, "load": b.load,
                                     "auto_threads": auto})
    finally:
        for v in variants.values():
            _reset(v.params, v.start)
        torch.set_num_threads(previous)
    def write(f):
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    files.atomic_write(run_dir / "bench.csv", write)  # a symlink planted there is replaced, not followed
    counts = ", ".join(str(t) for t in dict.fromkeys(r["threads"] for r in rows))
    print(f"{s.device}, {counts} thread(s), {b.load} background CPU-bound process(es), {b.rounds} rounds × "
          f"{b.steps} steps each; R = step / loss evaluation (the paper's R_f, R_b); ratio = median / "
          f"{b.estimators[0]}'s median (same batch and threads); peak memory = {MEMORY_METHOD[s.device.type == 'cuda']}; "
          f"memory_ratio = peak / a forward-only evaluation's peak (no_grad, same batch)")
    print(format_table(rows))
    print(f"→ {run_dir / 'bench.csv'}")


@dataclass
class Variant:
    """The model an entry of bench.estimators runs on (the run's own, or with bench.models'
    overrides), its parameters and their starting values."""

    model: object
    params: dict
    start: dict


def _variants(cfg: DictConfig, s) -> dict[str, Variant]:
    """Entry name → its Variant. Entries without bench.models overrides share the run's model;
    one with overrides gets a model built from the merged config at the same seed (so, e.g.,
    local losses and plain backprop start from the same weights where they share layers)."""
    own = Variant(s.model, s.params, {k: p.clone() for k, p in s.params.items()})
    out = {}
    for name in cfg.bench.estimators:
        overrides = cfg.bench.models.get(name)
        if not overrides:
            out[name] = own
            continue
        model = build(OmegaConf.merge(cfg.model, overrides), "model", input_shape=s.data.input_shape,
                      num_classes=s.data.num_classes)
        model.initialise(stream(cfg.seed, "init"))
        model.to(device=s.device, dtype=next(iter(s.params.values())).dtype)
        params = {k: p.detach() for k, p in model.named_parameters()}
        out[name] = Variant(model, params, {k: p.clone() for k, p in params.items()})
    return out


def _time_batch(cfg: DictConfig, s, nodes: dict, variants: dict[str, Variant], objective: Objective,
                objectives: dict[str, Objective], thread_counts: list[int], fixed: dict) -> list[dict]:
    """One batch: every estimator (and the plain loss) at every thread count, interleaved in
    each round, so load drift hits them all alike."""
    b = cfg.bench
    sync = synchroniser(s.device)
    steps, memory, passes = {}, {}, {}
    torch.set_num_threads(thread_counts[0])
    for name, node in nodes.items():
        v = variants[name]
        _reset(v.params, v.start)
        estimator = build(node, "estimator", generator=stream(cfg.seed, "tangents", s.device))
        estimator.bind(v.model)
        stated = estimator.passes(v.model)
        passes[name] = dict.fromkeys(PASSES) if stated is None else dict(zip(PASSES, (stated.forward, stated.forward_mode, stated.backward)))
        optimizer = build(cfg.optimizer, "optimizer", params=list(v.params.values()))
        steps[name] = Step(estimator, optimizer, build(cfg.schedule, "schedule", optimizer=optimizer))
        memory[name] = peak_memory_mb(lambda: steps[name](objectives[name], v.params), s.device)  # the warm-up
    with torch.no_grad():  # the denominator of memory_ratio: one forward-only evaluation of the same batch
        eval_memory = peak_memory_mb(lambda: objective.loss(s.params), s.device)
    times: dict[tuple, list[float]] = {(name, t): [] for t in thread_counts for name in ["loss", *steps]}
    for _ in range(b.rounds):
        for name, step in [("loss", None), *steps.items()]:
            v = variants[next(iter(steps)) if step is None else name]
            for count in thread_counts:
                torch.set_num_threads(count)
                _reset(v.params, v.start)
                for _ in range(b.steps):
                    sync()
                    t0 = time.perf_counter()
                    if step is None:  # T_f: the plain loss evaluation, no derivative
                        with torch.no_grad():
                            objective.loss(s.params)
                    else:
                        step(objectives[name], v.params)
                    sync()
                    times[name, count].append(time.perf_counter() - t0)
    rows = []
    for count in thread_counts:
        loss_eval = statistics.median(times.pop(("loss", count)))
        base = statistics.median(times[next(iter(steps)), count])
        for name in steps:
            values = times[name, count]
            q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
            median = statistics.median(values)
            rows.append({"estimator": name, **fixed, "threads": count, "loss_eval_s": loss_eval,
                         "median_step_s": median, "iqr_step_s": q3 - q1, "R": median / loss_eval,
                         "paper_R": b.paper_R.get(name), "ratio": median / base,
                         "peak_memory_mb": memory[name], "eval_memory_mb": eval_memory,
                         "memory_ratio": memory[name] / eval_memory if eval_memory > 0 else math.nan,
                         **passes[name]})
    return rows


MEMORY_METHOD = {True: "CUDA max_memory_allocated over the first step, above what was resident",
                 False: "the CPU profiler's allocation events over the first step (peak of their running sum)"}


@contextmanager
def _quiet_stderr():
    """The profiler's C++ side (kineto) prints start/stop lines straight to file descriptor 2,
    whatever its log level: silence that descriptor for the one profiled step."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(step: Callable[[], object], device: torch.device) -> float:
    """Peak memory one call of `step` allocates above what was resident before it, in MiB
    (its own persistent buffers, allocated on this first call, included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - resident) / 2**20
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak / 2**20


@torch.no_grad()
def _reset(params, start) -> None:
    for name, p in params.items():
        p.copy_(start[name])
        p.grad = None


def format_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(cell(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)
