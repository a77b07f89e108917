"""A sweep's jobs checked before the first one starts: `-m seed=0,1 max_steps=abc` is refused
in one line (exit 2), as a single run is, instead of launching jobs that each fail and leave a
job dir behind.

Hydra's basic sweeper (the grid, on every launcher: in this process, joblib, SLURM) composes
each job's config before launching the batch (`Sweeper.validate_batch_is_legal`), so that a
job that cannot compose fails early; `checked_jobs` adds the command's own check of each
composed config (gradbench.run.validate: keys, types, ranges) at that point. No job dir exists
yet; the sweep dir Hydra's callback made is removed again if the refusal leaves it empty.
Optuna's sweeper draws its jobs one trial at a time: each is checked when it runs.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf, open_dict

from gradbench.errors import ConfigError


@contextlib.contextmanager
def checked_jobs(check: Callable[[DictConfig], None]):
    """While a sweep runs: every job's composed config passes `check` (a ConfigError is the
    job's one-line refusal) before any job starts."""
    from hydra.plugins.sweeper import Sweeper

    hydras_own = Sweeper.validate_batch_is_legal

    def validate_batch_is_legal(self, batch) -> None:
        hydras_own(self, batch)  # each job composes (an unknown key, a missing option: Hydra's error)
        loader = getattr(self, "hydra_context", None) and self.hydra_context.config_loader or self.config_loader
        for overrides in batch:
            config = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))
            try:
                with job_hydra_config(config):
                    check(without_hydra(config))
            except ConfigError as e:
                refuse(self.config, list(overrides), e)

    Sweeper.validate_batch_is_legal = validate_batch_is_legal
    try:
        yield
    finally:
        Sweeper.validate_batch_is_legal = hydras_own


@contextlib.contextmanager
def job_hydra_config(config: DictConfig):
    """HydraConfig as the job will see it (its choices and overrides: the checks compose a
    reference config from them), restored after."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(config)
    try:
        yield
    finally:
        instance.cfg = saved


def without_hydra(config: DictConfig) -> DictConfig:
    """The job's config as its task function gets it: the `hydra` node removed."""
    job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]) if "hydra" in config else config
    with open_dict(job):
        job.pop("hydra", None)
    return job


def refuse(sweep_config: DictConfig, overrides: list[str], error: ConfigError) -> None:
    """One line naming the job's overrides and the key, exit 2; the sweep's progress bar
    stopped and its dir removed if nothing but the sweep's own bookkeeping is in it."""
    from gradbench.run.sweep import BARS

    sweep_dir = str(sweep_config.hydra.sweep.dir)
    if (bar := BARS.pop(sweep_dir, None)) is not None:
        bar.stop()
    print(f"gradbench: error: sweep job `{' '.join(overrides)}`: {error} (no job was started)", file=sys.stderr)
    path = Path(sweep_dir)
    if path.is_dir() and all(p.name in (".gradbench", "multirun.yaml") for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the date folder, if this was its only sweep
    sys.exit(2)
