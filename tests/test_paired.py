"""`gradbench report --baseline`: each group paired seed by seed with the baseline group.

Run dirs are written by hand with known values (the run-dir contract: .hydra/overrides.yaml,
summary.json, metrics.csv), so the expected intervals are computed here from those numbers with
an independent t table (scipy's t.ppf values), not from the code under test.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gradbench.commands.report import main

# t_{0.975, df} from scipy.stats.t.ppf(0.975, df) (independent of report_runs.T975)
T = {1: 12.706204736174707, 2: 4.302652729749464, 3: 3.182446305284263}

# group → seed → (test accuracy, mean step time in s); seeds 0-3, one missing in "forward"
VALUES = {
    "backward": {0: (0.90, 0.010), 1: (0.93, 0.012), 2: (0.88, 0.011), 3: (0.95, 0.010)},
    "forward": {0: (0.70, 0.020), 1: (0.81, 0.030), 3: (0.72, 0.022)},
    "forward_rank1": {0: (0.91, 0.010), 1: (0.92, 0.013), 2: (0.89, 0.011), 3: (0.94, 0.009)},
}


def write_run(path: Path, estimator: str, seed: int, accuracy: float, step_time: float, lr: float = 0.1) -> None:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"estimator={estimator}", f"optimizer.lr={lr}", f"seed={seed}"]))
    config = {"estimator": {"name": estimator}, "optimizer": {"lr": lr}, "seed": seed}
    summary = {"stop_reason": "max_steps", "steps": 10, "train_time_s": 10 * step_time,
               "mean_step_time_s": step_time, "seed": seed, "config": config, "choices": {"estimator": estimator},
               "final": {"test": {"accuracy": accuracy, "loss": 1 - accuracy}}}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.csv").write_text(f"step,train_time_s,test_accuracy\n10,{10 * step_time},{accuracy}\n")


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "sweep"
    k = 0
    for estimator, seeds in VALUES.items():
        for seed, (accuracy, step_time) in seeds.items():
            write_run(root / str(k), estimator, seed, accuracy, step_time)
            k += 1
    return root


def by_hand(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x, dtype=float)
    return float(a.mean()), T[len(a) - 1] * float(a.std(ddof=1)) / math.sqrt(len(a))


def test_paired_ci_is_the_t_interval_of_the_per_seed_differences(runs, capsys):
    assert main([str(runs), "--no-plots", "--baseline", "estimator=backward"]) == 0
    table = pd.read_csv(runs / "paired.csv")
    assert set(table["group"]) == {"estimator=forward optimizer.lr=0.1", "estimator=forward_rank1 optimizer.lr=0.1"}
    assert (table["baseline"] == "estimator=backward optimizer.lr=0.1").all()
    base = VALUES["backward"]
    for name, column, i in (("forward", "test_accuracy", 0), ("forward_rank1", "test_accuracy", 0),
                            ("forward", "mean_step_time_s", 1)):
        seeds = sorted(VALUES[name])  # only the seeds both groups have: forward lacks seed 2
        diffs = [VALUES[name][s][i] - base[s][i] for s in seeds]
        ratios = [VALUES[name][s][i] / base[s][i] for s in seeds]
        row = table[(table["group"] == f"estimator={name} optimizer.lr=0.1") & (table["metric"] == column)].iloc[0]
        mean, ci = by_hand(diffs)
        # the same arithmetic in another order: agreement to float rounding (~1e-15 relative)
        assert row["n"] == len(seeds)
        assert row["diff"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert row["diff_ci"] == pytest.approx(ci, rel=1e-9)
        assert (row["diff_lo"], row["diff_hi"]) == pytest.approx((mean - ci, mean + ci), rel=1e-9)
        assert (row["ratio"], row["ratio_ci"]) == pytest.approx(by_hand(ratios), rel=1e-9)
        assert bool(row["tied"]) == (mean - ci <= 0 <= mean + ci)
    # the hand-picked values: forward is clearly worse, forward_rank1's accuracy is within noise
    tied = table.set_index(["group", "metric"])["tied"]
    assert not tied[("estimator=forward optimizer.lr=0.1", "test_accuracy")]
    assert tied[("estimator=forward_rank1 optimizer.lr=0.1", "test_accuracy")]
    text = (runs / "paired.md").read_text()
    assert "Paired against" in text and "**tied**" in text
    assert "Paired against" in capsys.readouterr().out
    assert (runs / "table.csv").exists()  # the plain per-group table stays


def test_pairing_narrows_the_interval_when_seeds_move_both_groups(runs):
    """Why pairing: the seeds move backward and forward_rank1 together (seed 2 low, 3 high), so the
    paired difference's interval is narrower than either group's own interval."""
    main([str(runs), "--no-plots", "--baseline", "estimator=backward"])
    groups = pd.read_csv(runs / "table.csv").set_index("estimator")
    row = pd.read_csv(runs / "paired.csv").set_index(["group", "metric"]).loc[
        ("estimator=forward_rank1 optimizer.lr=0.1", "test_accuracy")]
    assert row["diff_ci"] < min(groups.loc["backward", "test_accuracy_ci"], groups.loc["forward_rank1", "test_accuracy_ci"])


@pytest.mark.parametrize("baseline, why", [
    (["estimator=manual"], "matches no group"),
    (["optimizer.lr=0.1"], "matches 3 groups"),
    (["estimator"], "must be KEY=VALUE"),
])
def test_a_baseline_that_picks_no_single_group_is_one_line_exit_2(runs, capsys, baseline, why):
    assert main([str(runs), "--no-plots", "--baseline", *baseline]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "--baseline" in err
    assert not (runs / "table.csv").exists()  # checked before any output is written


def test_a_baseline_key_can_be_a_config_value_and_several_keys_combine(runs):
    assert main([str(runs), "--no-plots", "--baseline", "estimator=forward", "optimizer.lr=0.1"]) == 0
    table = pd.read_csv(runs / "paired.csv")
    assert (table["baseline"] == "estimator=forward optimizer.lr=0.1").all()
    row = table[(table["group"] == "estimator=backward optimizer.lr=0.1") & (table["metric"] == "test_accuracy")]
    assert int(row["n"].iloc[0]) == 3  # forward has 3 seeds
