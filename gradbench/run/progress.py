"""Progress on a terminal: a tqdm bar over a run's steps and one over a sweep's jobs (i of n, ETA).

Only when stderr is a terminal. Files, CI and SLURM logs get the log lines alone: a bar redraws
itself with carriage returns, which a log file keeps as thousands of partial lines. Under a bar,
the console's log lines are printed above it (tqdm's logging_redirect_tqdm); train.log is as
without a bar.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path


def interactive() -> bool:
    """A person watches stderr (not a file, a pipe, CI or a SLURM log)."""
    return sys.stderr.isatty()


class StepBar:
    """Steps of one run: `with StepBar(total, done) as bar: ... bar.update(loss=..., val_loss=...)`;
    nothing at all when stderr is not a terminal."""

    def __init__(self, total: int | None, done: int = 0) -> None:
        self.total, self.done = total, done
        self.bar = None
        self._redirect = contextlib.nullcontext()

    def __enter__(self) -> StepBar:
        if interactive():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # leave=None: a single run's bar stays, a sweep job's (below the sweep's bar) goes
            self.bar = tqdm(total=self.total, initial=self.done, unit="step", dynamic_ncols=True,
                            leave=None, file=sys.stderr)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        return self

    def update(self, **shown: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False)
            self.bar.update(1)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self._redirect.__exit__(*exc)
            self.bar.close()


class SweepBar:
    """Jobs of a sweep, counted from the outcome files the jobs write (gradbench.run.sweep.record),
    so it follows any launcher: jobs in this process, in joblib workers, on SLURM."""

    def __init__(self, outcomes: Path, total: int | None) -> None:
        self.outcomes, self.total = outcomes, total
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if interactive():
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.total, unit="job", desc="sweep", dynamic_ncols=True, position=0,
                  file=sys.stderr) as bar:
            while True:
                stopping = self._stop.wait(0.5)
                done = len(list(self.outcomes.iterdir())) if self.outcomes.is_dir() else 0
                bar.update(done - bar.n)
                if stopping:
                    return

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)


def sweep_size(config) -> int | None:
    """How many jobs a sweep launches: the basic sweeper's grid of hydra.sweeper.params and the
    command's overrides, Optuna's n_trials; None where it cannot be known beforehand."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # another sweeper, or Hydra's internals changed: a bar without a total
        return None
