"""`gradbench bench`: estimators timed side by side, as a table of ratios (no speed asserted)."""

import pandas as pd
import pytest

from conftest import run_dirs


def test_bench_times_every_estimator_at_every_batch_size(runner, capsys):
    runner("bench", "bench.estimators=[backward,forward,manual]", "bench.batch_sizes=[8,null]",
           "bench.rounds=2", "bench.steps=3")
    (run,) = run_dirs(runner.cwd)
    table = pd.read_csv(run / "bench.csv")
    assert list(table["estimator"]) == ["backward", "forward", "manual"] * 2
    assert list(table["batch_size"]) == [8] * 3 + [204] * 3  # null = the whole training split
    assert (table["median_step_s"] > 0).all() and (table["iqr_step_s"] >= 0).all()
    assert list(table.loc[table["estimator"] == "backward", "ratio"]) == [1.0, 1.0]
    assert table["peak_memory_mb"].isna().all()  # measured on CUDA only
    assert "ratio = median / backward's median" in capsys.readouterr().out


def test_bench_names_the_estimators_it_knows(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("bench", "bench.estimators=[backward,nonexistent]")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bench.estimators must be options of conf/estimator" in err and "['nonexistent']" in err
