"""Every report experiment end to end through the CLI with tiny budgets, then `gradbench report`.

Image experiments run on small MNIST / CIFAR-10 files written in the real formats
(tests/image_fixtures.py), never on the real sets.
"""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_dirs
from gradbench.cli import main
from image_fixtures import write_cifar10, write_mnist

TINY = ["max_steps=4", "eval_every=2", "log_every_s=1000"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=120, n_test=40, seed=0)
    write_cifar10(root, n_per_batch=40, seed=0)
    return root


@pytest.fixture
def sweep(runner, data_root, monkeypatch):
    """sweep(experiment, *overrides) → (sweep dir, its report's table.csv as a frame)."""
    monkeypatch.setenv("GRADBENCH_DATA", str(data_root))

    def run(experiment: str, *overrides: str, report_args: tuple = ()) -> tuple:
        out = runner.cwd / "outputs" / "sweeps" / experiment
        runner("train", "-m", f"+experiment={experiment}", f"hydra.sweep.dir={out}", *TINY, *overrides)
        with pytest.raises(SystemExit) as exit_info:
            main(["report", str(out), "--no-plots", *report_args])
        assert exit_info.value.code == 0
        return out, pd.read_csv(out / "table.csv")

    return run


def summaries(sweep_dir):
    return [json.loads((d / "summary.json").read_text()) for d in run_dirs(sweep_dir.parent.parent.parent)
            if str(d).startswith(str(sweep_dir))]


def test_fwd_vs_bwd_groups_protocols_and_estimators_over_seeds(sweep):
    out, table = sweep("fwd_vs_bwd", "seed=0,1")
    assert len(table) == 4 and set(table["n"]) == {2}  # 2 protocols × 2 estimators, 2 seeds each
    row = table[(table["estimator"] == "forward") & (table["protocol"] == "r000_logreg")].iloc[0]
    runs = [s for s in summaries(out) if s["choices"]["estimator"] == "forward" and "protocol=r000_logreg" in " ".join(s["overrides"])]
    values = [s["final"]["test"]["accuracy"] for s in runs]
    assert row["test_accuracy"] == pytest.approx(sum(values) / 2)
    assert row["test_accuracy_ci"] == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-3)
    assert "report steps" in table.columns  # report 000's numbers beside ours


def test_fwd_vs_bwd_fair_picks_each_estimators_best_lr(sweep):
    out, _ = sweep("fwd_vs_bwd_fair", "+protocol=r000_logreg", "seed=0,1", "optimizer.lr=0.01,0.3",
                   report_args=("--best-per", "estimator", "--select", "val_loss", "--target-loss", "0.9"))
    best = pd.read_csv(out / "table_best.csv")
    assert sorted(best["estimator"]) == ["backward", "forward"]
    assert set(best["optimizer.lr"]) == {0.3}  # 4 steps: the larger rate is better for both


def test_fwd_vs_bwd_cnn_part_on_mnist(sweep):
    _, table = sweep("fwd_vs_bwd", "+protocol=r000_cnn", "seed=0", "dataset.train_size=50",
                     "dataset.test_size=20", "dataset.val_size=10")
    assert sorted(table["estimator"]) == ["backward", "forward"] and (table["failed"] == 0).all()


@pytest.mark.parametrize("experiment, model", [("paper_mnist", "mlp"), ("paper_mnist_cnn", "cnn_paper")])
def test_paper_mnist_runs_every_estimator(sweep, experiment, model):
    out, table = sweep(experiment, "seed=0", "max_steps=2", "batch_size=8", "dataset.val_size=10")
    assert len(table) == 3 and (table["failed"] == 0).all()
    assert set(table["estimator"]) == {"backward", "forward", "forward_rank1"}
    assert {s["choices"]["model"] for s in summaries(out)} == {model}


@pytest.mark.slow  # ~14 s: 10 CIFAR-format runs (make test-slow; CI runs it)
def test_five_models_shows_sgd_and_manual_sgd_identical(sweep):
    _, table = sweep("five_models", "batch_size=16", "max_steps=12")
    assert len(table) == 10 and (table["failed"] == 0).all()
    metrics = [c for c in table.columns if c.split("_")[0] in ("train", "val", "test") and "time" not in c]
    for preset, rows in table.groupby("optimizer/preset"):
        sgd, manual = (rows[rows["optimizer"] == name][metrics].iloc[0] for name in ("sgd", "manual_sgd"))
        pd.testing.assert_series_equal(sgd, manual, check_names=False)
    assert "report val_accuracy" in table.columns


def test_toy_backprop_estimators_agree_on_the_toy_network(sweep):
    _, table = sweep("toy_backprop", "seed=0,1", report_args=("--select", "train_loss"))
    losses = table.set_index("estimator")["train_loss"]
    assert losses["manual"] == pytest.approx(losses["backward"], rel=1e-5)
    assert losses["finite_difference"] == pytest.approx(losses["backward"], rel=1e-3)


def test_gd_vs_nag_on_penguins(sweep):
    _, table = sweep("gd_vs_nag", "seed=0,1", "max_epochs=6")
    assert sorted(table["optimizer"]) == ["gd", "nag"] and set(table["n"]) == {2}


@pytest.mark.slow  # ~17 s: Optuna's storage and trials (make test-slow; CI runs it)
def test_cifar_search_draws_trials_with_optunas_random_sampler(sweep, runner):
    out, table = sweep("cifar_search", "hydra.sweeper.n_trials=3", "batch_size=16", "dataset.val_size=20")
    assert len(table) == 3 and (table["failed"] == 0).all()
    lrs = [s["overrides"] for s in summaries(out)]
    assert len({str(o) for o in lrs}) == 3  # three distinct random draws
    assert "report val_accuracy" in table.columns


@pytest.mark.slow  # ~21 s: 8 CIFAR-format runs (make test-slow; CI runs it)
def test_depth_sweeps_layers_and_penalties(sweep):
    _, table = sweep("depth", "seed=0", "batch_size=16", "dataset.val_size=20")
    assert len(table) == 8 and (table["failed"] == 0).all()


@pytest.mark.slow  # ~14 s: 15 runs (make test-slow; CI runs it)
def test_paper_mnist_fair_runs_the_lr_grid_and_picks_per_estimator(sweep):
    out, table = sweep("paper_mnist_fair", "max_steps=2", "batch_size=8", "dataset.val_size=10",
                       report_args=("--best-per", "estimator", "--select", "val_accuracy", "--target-accuracy", "0.1"))
    assert len(table) == 15 and (table["failed"] == 0).all()  # 3 estimators × 5 learning rates
    best = pd.read_csv(out / "table_best.csv")
    assert sorted(best["estimator"]) == ["backward", "forward", "forward_rank1"]


def test_test_functions_sweep_both_functions_and_estimators(sweep):
    _, table = sweep("test_functions", "seed=0,1", "max_steps=20", report_args=("--target-loss", "100"))
    assert len(table) == 4 and (table["failed"] == 0).all() and set(table["n"]) == {2}


EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_validates_and_builds_its_update_rule(experiment):
    """Every conf/experiment option, by glob: it composes, passes the pre-flight checks, and its
    optimizer and schedule build (a schedule key the scheduler does not take fails here)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from gradbench.run.validate import validate

    with initialize_config_dir(str(Path(__file__).resolve().parent.parent / "conf"), version_base="1.3"):
        cfg = compose("config", [f"+experiment={experiment}"])
    validate(cfg, reference=cfg)
    optimizer = instantiate(cfg.optimizer, params=[torch.zeros(1, requires_grad=True)])
    instantiate(cfg.schedule, optimizer=optimizer)


MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"
# make fg-family's methods, read from the Makefile (name!overrides!rate grid), so none is left out
FG_METHODS = [m.strip(" \\").split("!") for m in
              MAKEFILE.read_text().split("FG_METHODS := \\\n")[1].split("\nfg-family:")[0].splitlines()]


@pytest.mark.parametrize("name,keys,rates", FG_METHODS, ids=[m[0] for m in FG_METHODS])
def test_fg_family_trains_each_method_on_its_grid(sweep, name, keys, rates):
    out, table = sweep("fg_family", *keys.split(","), f"optimizer.lr={rates}", "max_steps=2", "eval_every=1",
                       "batch_size=8", "dataset.val_size=10", report_args=("--select", "val_accuracy"))
    assert len(table) == len(rates.split(",")) and (table["n"] == 1).all()
    assert (table["failed"] == 0).all() or name != "backward"  # 2 steps at a top rate may diverge


def test_the_best_groups_overrides_train_it_again_on_other_seeds(sweep, runner):
    """make fg-family's second stage: best.overrides (the chosen group, without its seed) fed back
    to `train -m seed=...` gives runs of the same group on the new seeds."""
    out, table = sweep("fg_family", "estimator=backward", "optimizer.lr=0.001,0.5", "max_steps=3",
                       "batch_size=8", "dataset.val_size=10", report_args=("--select", "val_accuracy"))
    chosen = (out / "best.overrides").read_text().splitlines()
    best = table.loc[table["val_accuracy"].idxmax(), "optimizer.lr"]
    assert f"optimizer.lr={best:g}" in chosen and not any(o.startswith("seed=") for o in chosen)
    again = runner.cwd / "outputs" / "again"
    runner("train", "-m", *chosen, "seed=1,2", f"hydra.sweep.dir={again}", "log_every_s=1000")
    rerun = [json.loads((d / "summary.json").read_text()) for d in sorted(again.glob("[0-9]*"))]
    assert [r["seed"] for r in rerun] == [1, 2]
    assert all(f"optimizer.lr={best:g}" in r["overrides"] for r in rerun)
