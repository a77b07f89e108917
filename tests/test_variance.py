"""`gradbench variance`: each estimator's measured error against its theory as the MLP grows.

Tolerance: rel_mse is the mean of S = 400 squared relative errors, so it lies within a few of
its standard errors (rel_mse_se, the sample s.d. / √S) of the expectation; 4 s.e. (two-sided
p ≈ 6e-5 per point under a normal approximation of the mean) over 16 points, at a fixed seed.
"""

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import run_dirs
from gradbench.cli import CONF

SWEEP = ["variance.widths=[4,32]", "variance.depth=1", "variance.depths=[1,3]", "variance.width=8",
         "variance.samples=400", "variance.estimators=[forward,forward_rank1,forward_activities,forward_project]",
         "device=cpu"]


def test_measured_errors_follow_theory_and_grow_as_each_law_says(runner):
    runner("variance", *SWEEP)
    (run,) = run_dirs(runner.cwd)
    table = pd.read_csv(run / "variance.csv")
    assert len(table) == (2 + 2) * 4 and (run / "variance.png").stat().st_size > 0
    from gradbench.commands.variance import method_name  # the legend's names: the README tables'
    project = OmegaConf.merge(*(OmegaConf.load(Path(CONF) / "estimator" / f"{o}.yaml") for o in ("forward", "forward_project")))
    assert method_name("forward_project", project) == "projection K = 8"  # K = 8 dense tangents
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


def test_estimators_with_the_same_error_both_show():
    """Dense and rank-1 weight perturbation have the same error (n + 1): drawn alike, one hid
    the other. Each estimator has its own marker and theory dashes, and its points are nudged
    sideways, so at every width and depth both are visible."""
    import matplotlib.pyplot as plt

    from gradbench.commands.variance import draw
    from gradbench.present.figstyle import Look

    rows = [{"sweep": sweep, "width": w, "depth": d, "estimator": e, "rel_mse": 10.0 * w * d, "rel_mse_se": 1.0,
             "theory": 10.0 * w * d} for e in ("forward", "forward_rank1")
            for sweep, w, d in [("width", 8, 1), ("width", 64, 1), ("depth", 8, 1), ("depth", 8, 3)]]
    fig = draw(rows, "test", Look())
    try:
        for ax in fig.axes[:2]:
            points = [line for line in ax.get_lines() if line.get_linestyle() == "None" and len(line.get_xdata()) == 2]
            theory = [line for line in ax.get_lines() if line.get_linestyle() != "None"]
            assert len(points) == 2 and len(theory) == 2
            assert points[0].get_marker() != points[1].get_marker()
            assert all(a != b for a, b in zip(points[0].get_xdata(), points[1].get_xdata()))  # nudged apart
            assert theory[0].get_linestyle() != theory[1].get_linestyle()
        labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
        assert labels[:2] == ["FG-W dense", "FG-W rank-1"]
    finally:
        plt.close(fig)
