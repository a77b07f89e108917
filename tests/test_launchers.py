"""Sweeps through Hydra's own launchers: joblib (local parallel) and submitit (local form)."""

import pandas as pd
import pytest

from gradbench.cli import main


@pytest.mark.parametrize("launcher", ["parallel", "submitit_local"])
def test_launcher_sweep_completes_records_failures_and_is_reported(runner, launcher):
    out = runner.cwd / "sweep"
    result = runner.subprocess("train", "-m", f"hydra/launcher={launcher}", "threads=1", "model=logreg",
                               "seed=0,1", "optimizer.lr=0.1,-1", "max_steps=5", "plot=false",
                               f"hydra.sweep.dir={out}", check=False)
    # every job ran, then the sweep says how it went and exits 1 for the failed ones
    assert result.returncode == 1, result.stderr[-2000:]
    assert "sweep done: 2 finished, 0 diverged, 2 failed, 0 skipped" in result.stdout + result.stderr
    assert len(list(out.glob("*/summary.json"))) == 4  # the failing jobs are recorded too
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(out), "--no-plots"])
    assert exit_info.value.code == 0
    table = pd.read_csv(out / "table.csv").set_index("optimizer.lr")
    assert table.loc[0.1, "n"] == 2 and table.loc[0.1, "failed"] == 0
    assert table.loc[-1.0, "failed"] == 2  # lr = -1: a ConfigError in each job, the sweep went on
