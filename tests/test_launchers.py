"""Sweeps through Hydra's own launchers: joblib (local parallel) and submitit (local form)."""

import json
import os
import random
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from conftest import GRADBENCH, kill_all, processes_with, wait_until_gone
from gradbench.cli import main


@pytest.mark.parametrize("launcher", ["parallel", pytest.param("submitit_local", marks=pytest.mark.slow)])  # submitit: ~19 s
def test_launcher_sweep_completes_records_failures_and_is_reported(runner, launcher):
    out = runner.cwd / "sweep"
    result = runner.subprocess("train", "-m", f"hydra/launcher={launcher}", "threads=1", "model=logreg",
                               "seed=0,1", "batch_size=16,100000", "max_steps=5", "plot=false",
                               f"hydra.sweep.dir={out}", check=False)
    # every job ran, then the sweep says how it went and exits 1 for the failed ones
    assert result.returncode == 1, result.stderr[-2000:]
    assert "sweep done: 2 finished, 0 diverged, 2 failed, 0 skipped" in result.stdout + result.stderr
    assert len(list(out.glob("*/summary.json"))) == 4  # the failing jobs are recorded too
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(out), "--no-plots"])
    assert exit_info.value.code == 0
    table = pd.read_csv(out / "table.csv").set_index("batch_size")
    assert table.loc[16, "n"] == 2 and table.loc[16, "failed"] == 0
    # a batch larger than the training split: a ConfigError in each job once it has the data (a
    # value every config check passes; an invalid one refuses the sweep before it starts), the sweep went on
    assert table.loc[100000, "failed"] == 2


@pytest.mark.slow  # ~17 s: Optuna start-up (make test-slow; CI runs it)
def test_an_optuna_search_with_diverging_trials_runs_every_trial(runner):
    """Diverged trials return the sweeper's worst value (+inf when minimising), not NaN: Optuna
    records them as complete, the study runs all its trials, exit 0, and the report counts them."""
    out = runner.cwd / "search"
    result = runner.subprocess("train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=6",
                               "hydra.sweeper.sampler.seed=1", "optimizer.lr=tag(log, interval(1e-3, 1e3))", "threads=1", "max_steps=100",
                               "plot=false", f"hydra.sweep.dir={out}", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    stops = [json.loads(p.read_text())["stop_reason"] for p in out.glob("*/summary.json")]
    assert len(stops) == 6 and "diverged" in stops and "max_steps" in stops
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(out), "--no-plots"])
    assert exit_info.value.code == 0
    table = pd.read_csv(out / "table.csv")
    assert (table["stops"].str.contains("diverged")).sum() == stops.count("diverged")


def test_the_slurm_launcher_without_slurm_is_one_line_before_any_dir(runner):
    out = runner.cwd / "sweep"
    result = runner.subprocess("train", "-m", "hydra/launcher=slurm", "max_steps=2", f"hydra.sweep.dir={out}",
                               check=False, env={"PATH": "/nonexistent"})  # no srun; the script's shebang names python
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gradbench: error: hydra/launcher=slurm needs SLURM (srun is not on PATH): run the sweep on the cluster, "
        "or pick hydra/launcher=parallel (this machine) or submitit_local"]
    assert not out.exists()


@pytest.mark.slow
def test_kill_9_of_a_parallel_sweep_at_random_moments_leaves_no_process(tmp_path, processes):
    """kill -9 of a parallel sweep's parent, 10 times at seeded random moments (while it starts,
    while its workers start, while they train): within seconds no process of the sweep is left,
    and no worker takes a queued job after the parent died."""
    rng, leftovers = random.Random(17), []
    for attempt in range(10):
        marker = f"GRADBENCH_TEST_{uuid.uuid4().hex}"
        sweep = tmp_path / str(attempt)
        parent = processes.start([GRADBENCH, "train", "-m", "hydra/launcher=parallel", "threads=1", "seed=0,1,2,3,4,5",
                                  "max_steps=100000", "plot=false", "log_every_s=1000", f"hydra.sweep.dir={sweep}"],
                                 cwd=tmp_path, env={**os.environ, marker: "1"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        phase = attempt % 3  # 0: the parent starting; 1: a worker starting; 2: the workers training
        deadline = time.monotonic() + 120
        while phase and time.monotonic() < deadline:
            if phase == 1 and set(processes_with(marker)) - {parent.pid}:
                break
            if phase == 2 and list(sweep.glob("*/metrics.csv")):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 3.0 if phase == 0 else 1.5))
        parent.kill()
        parent.wait()
        # the workers see their parent gone within a second or two; 30 s covers a loaded machine
        left = wait_until_gone(lambda: processes_with(marker), timeout=30)
        kill_all(left)  # leave nothing behind for the next try, whatever the verdict
        if left:
            leftovers.append((attempt, phase, left))
        started = sorted(p.parent.name for p in sweep.glob("*/metrics.csv"))
        assert len(started) <= 2, f"try {attempt}: jobs {started} started, more than n_jobs=2: a queued job was taken"
    assert leftovers == []
