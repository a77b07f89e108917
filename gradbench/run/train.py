"""The training loop: batch → estimator → optimizer step, with evaluation and stop rules.

Only the estimate and the update are timed (with device synchronisation); evaluation,
logging and CSV writing happen outside the timer. Every finished step is on disk.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch.func import functional_call

from gradbench.data import Data, Split, batches
from gradbench.estimators import Estimator
from gradbench.run.metrics import MetricsWriter
from gradbench.models import Model, Objective, Params
from gradbench.optim import apply
from gradbench.run.progress import StepBar
from gradbench.run.sweep import in_worker

log = logging.getLogger(__name__)


class Probe(Protocol):
    """An optional per-step diagnostic, run outside the timer; adds `columns` to the CSV."""

    columns: list[str]

    def __call__(self, objective: Objective, params: Params, grads: Params) -> dict[str, float]: ...


class Step:
    """The timed unit, of training and of `gradbench bench` alike: one estimate, one update
    (dense or factored: optim.apply), one scheduler step. Diagnostics that must see the
    estimate call `estimate` and `update` apart and keep their own time out."""

    def __init__(self, estimator: Estimator, optimizer: torch.optim.Optimizer, scheduler) -> None:
        self.estimator, self.optimizer, self.scheduler = estimator, optimizer, scheduler

    def __call__(self, objective: Objective, params: Params) -> torch.Tensor:
        loss, grads = self.estimate(objective, params)
        self.update(params, grads)
        return loss

    def estimate(self, objective: Objective, params: Params) -> tuple[torch.Tensor, dict]:
        return self.estimator(objective, params)

    def update(self, params: Params, grads: dict) -> None:
        apply(self.optimizer, params, grads)
        self.scheduler.step()


@dataclass
class StopRule:
    max_steps: int | None = None
    max_epochs: int | None = None
    stop_below: float | None = None  # on the loss over the whole training split


@dataclass
class Result:
    steps: int = 0
    epochs: float = 0.0
    stop_reason: str = ""
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    step_times: list[float] = field(default_factory=list)
    initial: dict[str, dict[str, float]] = field(default_factory=dict)
    final: dict[str, dict[str, float]] = field(default_factory=dict)
    diverged_at_step: int | None = None  # the step whose loss or parameters were not finite

    @property
    def mean_step_time_s(self) -> float:
        return self.train_time_s / self.steps if self.steps else math.nan

    @property
    def median_step_time_s(self) -> float:
        return statistics.median(self.step_times) if self.step_times else math.nan


@torch.no_grad()
def predict(model: Model, params: Params, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Model outputs for every row of `x`, the forward pass chunked for memory (never per sample)."""
    return torch.cat([functional_call(model, params, (part,)) for part in x.split(chunk)])


def evaluate(model: Model, params: Params, split: Split, chunk: int) -> dict[str, float]:
    """Whole-split metrics (loss, accuracy, errors, ... as the model defines them)."""
    outputs = predict(model, params, split.x, chunk)
    return {k: v.item() for k, v in model.metrics(outputs, split.y, params).items()}


def synchroniser(device: torch.device) -> Callable[[], None]:
    """Wait for queued device work, so the clock reads finished work (no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


class Signals:
    """SIGINT and SIGTERM during training: the first lets the current step finish and stops the
    run cleanly (`signum` is set); a second exits at once, leaving every finished CSV row and
    the last checkpoint on disk. Handlers are installed only in the main thread, and restored.
    In a sweep's worker process only SIGTERM counts: the sweep's parent turns a Ctrl-C into one
    SIGTERM per worker (gradbench.run.sweep.guard_sweep), so the terminal's own SIGINT is ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        log.warning("%s: finishing the current step, then writing the outputs (again to quit at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            worker = in_worker()
            self._saved = {s: signal.signal(s, signal.SIG_IGN if worker and s == signal.SIGINT else self._handle)
                           for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, handler)


def train(model: Model, params: Params, data: Data, timed_step: Step, writer: MetricsWriter, *,
          batch_size: int | None, stop: StopRule, eval_every: int, eval_splits: list[str],
          eval_chunk: int, generator: torch.Generator, log_every_s: float = 5.0,
          probes: tuple[Probe, ...] = (), checkpoint: Callable[[dict], None] | None = None,
          checkpoint_every: int | None = None, resume: dict | None = None,
          signals: Signals | None = None) -> Result:
    """Train `params` in place until a stop rule fires; one CSV row per step.

    `checkpoint(state)` is called every `checkpoint_every` steps and once at the end, whatever
    the stop reason; `resume` is such a state, from which training continues exactly.
    """
    device = data.train.x.device
    n = len(data.train)
    batch_size = min(batch_size or n, n)
    steps_per_epoch = math.ceil(n / batch_size)
    splits = [s for s in eval_splits if len(data.splits[s])]
    signals = signals or Signals()

    def run_eval(names: list[str]) -> dict[str, dict[str, float]]:
        return {s: evaluate(model, params, data.splits[s], eval_chunk) for s in names}

    order = batches(n, batch_size, generator, device)
    if resume is None:
        result = Result(initial=run_eval(splits))
    else:
        result = _restore(resume, params, timed_step, order)
        log.info("resumed at step %d", result.steps)
    sync = synchroniser(device)
    first = data.train.take(torch.arange(min(batch_size, n), device=device))
    timed_step.estimator.warm_up(Objective(model, first.x, first.y), params)
    start = last_log = time.perf_counter() - result.wall_time_s
    bar = StepBar(_step_budget(stop, steps_per_epoch), result.steps).__enter__()  # a terminal only
    try:
        while not result.stop_reason and not _budget_reason(result.steps, steps_per_epoch, 0.0, stop):
            batch = data.train.take(next(order))
            objective = Objective(model, batch.x, batch.y)
            lr = timed_step.optimizer.param_groups[0]["lr"]
            probed, probe_time = {}, 0.0
            sync()
            t0 = time.perf_counter()
            if probes:  # at the estimate's parameters (before the update), off the clock
                loss, grads = timed_step.estimate(objective, params)
                sync()
                p0 = time.perf_counter()
                for probe in probes:
                    probed.update(probe(objective, params, grads))
                sync()
                probe_time = time.perf_counter() - p0
                timed_step.update(params, grads)
            else:
                loss = timed_step(objective, params)
            sync()
            step_time = time.perf_counter() - t0 - probe_time

            result.steps += 1
            result.train_time_s += step_time
            result.step_times.append(step_time)
            step, batch_loss = result.steps, float(loss)
            row = {"step": step, "epoch": (step - 1) // steps_per_epoch + 1, "batch_loss": batch_loss,
                   "lr": lr, "step_time_s": step_time, "train_time_s": result.train_time_s}
            row.update(probed)

            reason = _budget_reason(step, steps_per_epoch, batch_loss, stop)
            evals = {}
            if stop.stop_below is not None and reason != "diverged":
                evals = run_eval(["train"])
                if evals["train"]["loss"] < stop.stop_below:
                    reason = "threshold"
            if reason or step % eval_every == 0:
                evals.update(run_eval([s for s in splits if s not in evals]))
                if any(not math.isfinite(m["loss"]) for m in evals.values()):
                    reason = "diverged"
            if reason == "diverged":
                result.diverged_at_step = step
                evals = not_a_result(evals)
            for split, metrics in evals.items():
                row.update({f"{split}_{k}": v for k, v in metrics.items()})
                result.final[split] = metrics
            row["wall_time_s"] = result.wall_time_s = time.perf_counter() - start
            writer.write(row)
            bar.update(loss=batch_loss, val_loss=row.get("val_loss"))
            if not reason and signals.signum is not None:
                reason = "interrupted"  # this row as an uninterrupted run writes it; metrics below
            result.stop_reason = reason
            if checkpoint and checkpoint_every and step % checkpoint_every == 0 and not reason:
                checkpoint(_state(params, timed_step, order, result))

            if reason or time.perf_counter() - last_log >= log_every_s:
                last_log = time.perf_counter()
                log.info(_progress(row, splits))
    except KeyboardInterrupt:  # no handler could be installed (not the main thread): stop as cleanly
        result.stop_reason = "interrupted"
        signals.signum = signal.SIGINT
    finally:
        bar.__exit__(None, None, None)
    if not result.stop_reason:  # resumed at or past the budget: nothing left to train
        result.stop_reason = _budget_reason(result.steps, steps_per_epoch, 0.0, stop)
    if result.stop_reason == "interrupted":
        result.final = run_eval(splits)  # the parameters the run stopped with, not in the CSV
    result.epochs = result.steps / steps_per_epoch
    result.wall_time_s = time.perf_counter() - start
    if result.stop_reason != "diverged" and not all(torch.isfinite(p).all() for p in params.values()):
        result.stop_reason, result.diverged_at_step = "diverged", result.steps
        result.final = not_a_result(result.final)
    if checkpoint:
        checkpoint(_state(params, timed_step, order, result))
    return result


def not_a_result(evals: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """A diverged model's metrics but its loss are missing (None: null in summary.json, an empty
    cell in metrics.csv): non-finite outputs all predict class 0, an accuracy that means nothing."""
    return {split: {k: v if k == "loss" else None for k, v in metrics.items()} for split, metrics in evals.items()}


def _state(params: Params, timed_step: Step, order, result: Result) -> dict:
    """Everything `train` needs to continue from here (see gradbench.run.checkpoint)."""
    generator = timed_step.estimator.generator
    return {"step": result.steps, "params": dict(params),
            "optimizer": timed_step.optimizer.state_dict(), "scheduler": timed_step.scheduler.state_dict(),
            "tangents": generator.get_state() if generator is not None else None,
            "batches": order.state_dict(),
            "estimator": timed_step.estimator.state_dict(),  # FA/DFA's fixed matrices; {} for most
            "result": {k: getattr(result, k) for k in ("steps", "train_time_s", "wall_time_s", "step_times",
                                                        "initial", "final")}}


@torch.no_grad()
def _restore(state: dict, params: Params, timed_step: Step, order) -> Result:
    for name, p in params.items():
        p.copy_(state["params"][name])
    timed_step.optimizer.load_state_dict(state["optimizer"])
    timed_step.scheduler.load_state_dict(state["scheduler"])
    if state["tangents"] is not None:
        timed_step.estimator.generator.set_state(state["tangents"])
    order.load_state_dict(state["batches"])
    timed_step.estimator.load_state_dict(state.get("estimator") or {})  # absent in older checkpoints
    return Result(**state["result"])


def _step_budget(stop: StopRule, steps_per_epoch: int) -> int | None:
    """The steps the stop rules allow at most (the bar's total); None: no limit."""
    limits = [n for n in (stop.max_steps, stop.max_epochs and stop.max_epochs * steps_per_epoch) if n]
    return min(limits) if limits else None


def _budget_reason(step: int, steps_per_epoch: int, loss: float, stop: StopRule) -> str:
    if not math.isfinite(loss):
        return "diverged"
    if stop.max_steps is not None and step >= stop.max_steps:
        return "max_steps"
    if stop.max_epochs is not None and step >= stop.max_epochs * steps_per_epoch:
        return "max_epochs"
    return ""


def _progress(row: dict, splits: list[str]) -> str:
    parts = [f"step {row['step']}", f"epoch {row['epoch']}", f"batch loss {row['batch_loss']:.4g}",
             f"train time {row['train_time_s']:.2f}s"]
    for split in splits:
        if f"{split}_loss" in row:
            parts.append(f"{split} loss {row[f'{split}_loss']:.4g}")
        if row.get(f"{split}_accuracy") is not None:  # None: a diverged model's, not a result
            parts.append(f"{split} acc {row[f'{split}_accuracy']:.3f}")
    return " | ".join(parts)
