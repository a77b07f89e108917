"""`gradbench variance`: each estimator's measured error against its theory as the MLP grows.

Tolerance: rel_mse is the mean of S = 400 squared relative errors, so it lies within a few of
its standard errors (rel_mse_se, the sample s.d. / √S) of the expectation; 4 s.e. (two-sided
p ≈ 6e-5 per point under a normal approximation of the mean) over 16 points, at a fixed seed.
"""

import pandas as pd
import pytest

from conftest import run_dirs

SWEEP = ["variance.widths=[4,32]", "variance.depth=1", "variance.depths=[1,3]", "variance.width=8",
         "variance.samples=400", "variance.estimators=[forward,forward_rank1,forward_activities,forward_project]",
         "device=cpu"]


def test_measured_errors_follow_theory_and_grow_as_each_law_says(runner):
    runner("variance", *SWEEP)
    (run,) = run_dirs(runner.cwd)
    table = pd.read_csv(run / "variance.csv")
    assert len(table) == (2 + 2) * 4 and (run / "variance.png").stat().st_size > 0
    off = (table["rel_mse"] - table["theory"]).abs() / table["rel_mse_se"]
    assert (off < 4).all(), table.assign(off=off)
    width = table[table["sweep"] == "width"].set_index(["estimator", "width"])["rel_mse"]
    # weight perturbation: ≈ n + 1, n the parameter count (4 → 32 wide: 35 → 227 parameters)
    assert width["forward", 32] > 4 * width["forward", 4]
    # activity perturbation's error does not follow the parameter count: far below weights' at width 32
    assert width["forward_activities", 32] < width["forward", 32] / 4


def test_a_bad_figure_look_is_one_line_before_any_work(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("variance", "variance.look.style=fancy", "device=cpu")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "variance.look.style must be one of default | paper, got 'fancy'" in err
    assert not list(runner.cwd.rglob("variance.csv"))  # refused before the sweep
