"""The report make targets that run on penguins, end to end (slow: CI runs them via test-all)."""

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def make(target: str, reports: Path) -> str:
    """`make target` into `reports`, with an empty data root: the penguins parts only, as on a
    user's fresh clone (the real-MNIST parts are run by hand for the README)."""
    empty = reports / "no-data"
    empty.mkdir()
    result = subprocess.run(["make", "-C", str(REPO), target, f"REPORTS={reports}", "ARGS=threads=1"],
                            capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "GRADBENCH_DATA": str(empty)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_make_gd_vs_nag_prints_ours_beside_the_reports(tmp_path):
    out = make("gd-vs-nag", tmp_path)
    assert "report train_accuracy" in out and "report 003" in out
    table = pd.read_csv(tmp_path / "gd_vs_nag" / "table.csv").set_index("optimizer")
    assert list(table["n"]) == [5, 5] and table.loc["nag", "train_loss"] < table.loc["gd", "train_loss"]


@pytest.mark.slow
def test_make_fwd_vs_bwd_runs_the_shared_and_the_fair_comparison(tmp_path):
    out = make("fwd-vs-bwd", tmp_path)
    assert "report steps" in out  # report 000's numbers beside ours
    shared = pd.read_csv(tmp_path / "fwd_vs_bwd" / "shared" / "table.csv")
    assert len(shared) == 4 and set(shared["n"]) == {5}
    for model in ("logreg", "mlp"):
        best = pd.read_csv(tmp_path / "fwd_vs_bwd" / f"fair_{model}" / "table_best.csv")
        assert sorted(best["estimator"]) == ["backward", "forward"]
