"""`gradbench check`: table, check.csv and grads.json; exit 0 when the estimators agree with
autograd, 1 when one (a deliberately broken estimator defined here) does not. Also the
per-step diagnostic of training runs (`diagnose=true`).

Statistical tolerances: for normal tangents the mean of N forward gradients over n parameters
has E‖ḡ − ∇L‖²/‖∇L‖² = (n + 1)/N (gradbench.commands.check.expected_spread); over n ≈ 70 nearly
independent coordinates one draw of that ratio scatters by ~sqrt(2/n) ≈ 17%, so the relative
error (its square root) stays within a factor 1.5 of sqrt((n + 1)/N). A single estimate's
cosine |u₁| has standard deviation ≈ 0.75 × its mean; averaged over 100 draws, 7.5%: ±30%.
"""

import json

import pandas as pd
import pytest

from conftest import FAST, load_run
from gradbench.estimators import Backward, Estimator
from gradbench.models import MLP

SMALL = ["model.hidden=[12]", "model.activation=tanh", "batch_size=64", "check.samples=[1,10,100]"]


class Broken(Estimator):
    """Backprop with a classic bug: the bias gradients are left out (zeros)."""

    def __call__(self, objective, params):
        loss, grads = Backward()(objective, params)
        return loss, {k: g * 0 if k.endswith("bias") else g for k, g in grads.items()}


class Crashing(Estimator):
    def __call__(self, objective, params):
        raise RuntimeError("out of cheese")


class WiderMLP(MLP):
    """Not an MLP as far as the manual estimator is concerned (exact types only)."""


def table(run) -> pd.DataFrame:
    return pd.read_csv(run / "check.csv")


def test_check_passes_and_writes_table_and_reference(runner, capsys):
    (run,) = runner("check", *SMALL)
    printed = capsys.readouterr().out
    frame = table(run)
    exact = frame[frame.kind == "exact"].set_index("estimator")
    assert set(exact.index) >= {"backward", "manual", "finite_difference"}
    assert (exact.verdict == "pass").all()
    assert exact.loc["manual", "rel_error"] < 1e-12 and exact.loc["finite_difference", "rel_error"] < 1e-6
    assert (exact.cosine > 1 - 1e-12).all()
    for name in exact.index:
        assert name in printed
    assert "rel_error" in printed and "expected_rel_error" in printed

    reference = json.loads((run / "grads.json").read_text())
    shapes = {"layers.0.weight": [12, 4], "layers.0.bias": [12], "layers.2.weight": [3, 12], "layers.2.bias": [3]}
    assert {k: list(pd.DataFrame(v).shape) if isinstance(v[0], list) else [len(v)]
            for k, v in reference["grads"].items()} == shapes
    assert 0 < reference["loss"] < 10


def test_forward_error_shrinks_like_the_theory_says(runner):
    (run,) = runner("check", *SMALL)
    frame = table(run)
    forward = frame[(frame.estimator == "forward") & (frame.kind == "mean of N")].set_index("N")
    assert list(forward.index) == [1, 10, 100]
    n = 12 * 4 + 12 + 3 * 12 + 3
    for big_n, row in forward.iterrows():
        assert row.expected_rel_error == pytest.approx(((n + 1) / big_n) ** 0.5)
        assert 1 / 1.5 < row.rel_error / row.expected_rel_error < 1.5, big_n
    each = frame[(frame.estimator == "forward") & (frame.kind == "each")].iloc[0]
    assert 0.7 < each.cosine / each.expected_cosine < 1.3
    assert 1 / 1.5 < each.rel_error / each.expected_rel_error < 1.5


def test_a_broken_estimator_fails_the_check_with_exit_status_1(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("check", *SMALL, "check.samples=[1]", "+check.extra.broken._target_=test_check.Broken",
               "+check.extra.crashing._target_=test_check.Crashing")
    assert exit_info.value.code == 1
    assert "broken, crashing disagree" in capsys.readouterr().err
    (run,) = [p.parent for p in runner.cwd.rglob("check.csv")]  # written before failing
    frame = table(run).set_index("estimator")
    assert frame.loc["broken", "verdict"] == "FAIL" and "bias" in frame.loc["broken", "note"]
    assert frame.loc["broken", "rel_error"] > 1e-3
    assert frame.loc["crashing", "verdict"] == "FAIL" and "out of cheese" in frame.loc["crashing", "note"]
    assert frame.loc["manual", "verdict"] == "pass"
    assert (run / "grads.json").exists()


def test_an_unsupported_model_skips_manual_and_still_passes(runner):
    (run,) = runner("check", *SMALL, "check.samples=[1]", "model._target_=test_check.WiderMLP")
    frame = table(run).set_index("estimator")
    assert frame.loc["manual", "kind"] == "skipped"
    assert "no hand-derived gradient" in frame.loc["manual", "note"]
    assert frame.loc["backward", "verdict"] == "pass"


@pytest.mark.parametrize("estimator", ["forward", "backward"])
def test_diagnose_adds_cosine_and_relative_error_columns(runner, estimator):
    (run,) = runner("train", "model=logreg", f"estimator={estimator}", "max_steps=10", "diagnose=true", *FAST)
    metrics, _ = load_run(run)
    assert metrics["grad_cosine"].notna().all() and metrics["grad_rel_error"].notna().all()
    if estimator == "backward":  # the true gradient itself
        assert (metrics["grad_rel_error"] < 1e-6).all() and (metrics["grad_cosine"] > 1 - 1e-6).all()
    else:  # logreg on penguins: n = 15 parameters, so one estimate is far off but correlated
        assert (metrics["grad_cosine"] > 0).all() and metrics["grad_rel_error"].mean() > 1


def test_diagnose_is_off_by_default(runner):
    (run,) = runner("train", "model=logreg", "max_steps=3", *FAST)
    assert "grad_cosine" not in load_run(run)[0]
