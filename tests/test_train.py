"""`gradbench train` end to end: outputs, stop rules, determinism, pairing, bad input."""

import json

import pandas as pd
import pytest
import torch

import gradbench.commands.train
import gradbench.run.train
from conftest import FAST, load_run
from gradbench.models import Objective

TIME_COLUMNS = ["step_time_s", "train_time_s", "wall_time_s"]
RUN_FILES = ["metrics.csv", "summary.json", "model.pt", "loss.png", "accuracy.png", "errors.png",
             ".hydra/config.yaml", ".hydra/overrides.yaml"]


def test_default_run_writes_every_output(runner):
    (run,) = runner("train", "max_steps=20", "eval_every=5")
    for name in RUN_FILES:
        assert (run / name).exists(), name
    frame, summary = load_run(run)
    assert summary["stop_reason"] == "max_steps" and summary["steps"] == 20
    assert summary["choices"]["estimator"] == "forward" and summary["device"] == "cpu"
    assert summary["num_params"] == 4 * 64 + 64 + 64 * 8 + 8 + 8 * 3 + 3
    assert set(summary["final"]) == {"train", "val", "test"}
    assert sum(map(sum, summary["test_confusion"])) == 69  # 20% of 342 penguins, stratified
    state = torch.load(run / "model.pt")
    assert state["input_shape"] == [4] and state["num_classes"] == 3


def test_csv_columns_and_rows_match_the_steps_run(runner):
    (run,) = runner("train", "model=logreg", "batch_size=50", "max_epochs=3", "max_steps=null",
                    "eval_every=4", "plot=false")
    frame, summary = load_run(run)
    steps_per_epoch = -(-204 // 50)  # 204 training penguins → 5 batches per epoch
    assert summary["steps"] == len(frame) == 3 * steps_per_epoch
    assert summary["stop_reason"] == "max_epochs"
    assert list(frame.columns[:7]) == ["step", "epoch", "batch_loss", "lr", *TIME_COLUMNS]
    assert {f"{s}_{m}" for s in ("train", "val", "test") for m in ("loss", "accuracy", "errors")} <= set(frame.columns)
    assert frame["step"].tolist() == list(range(1, 16))
    assert frame["epoch"].tolist() == [e for e in (1, 2, 3) for _ in range(steps_per_epoch)]
    evaluated = frame["val_loss"].notna()
    assert frame.loc[evaluated, "step"].tolist() == [4, 8, 12, 15]  # every 4 steps and the last
    assert (frame["train_time_s"].diff().dropna() > 0).all()


@pytest.mark.parametrize("estimator", ["forward", "backward"])
def test_training_lowers_the_penguins_test_loss(runner, estimator):
    (run,) = runner("train", f"estimator={estimator}", "max_steps=200", *FAST)
    _, summary = load_run(run)
    assert summary["final"]["test"]["loss"] < 0.5 * summary["initial"]["test"]["loss"]
    assert summary["final"]["test"]["accuracy"] > 0.9


def test_forward_and_backward_see_the_same_start_and_batches(runner, monkeypatch):
    """Paired comparison: with one seed, the same initial parameters and the same batch order."""
    seen: dict[str, list] = {}

    def recording_objective(model, x, y):
        seen.setdefault("batches", []).append(y.clone())
        return Objective(model, x, y)

    real_train = gradbench.commands.train.train

    def recording_train(model, params, *args, **kwargs):
        seen.setdefault("init", []).append({k: p.clone() for k, p in params.items()})
        return real_train(model, params, *args, **kwargs)

    monkeypatch.setattr(gradbench.run.train, "Objective", recording_objective)
    monkeypatch.setattr(gradbench.commands.train, "train", recording_train)
    runs = {}
    for estimator in ("forward", "backward"):
        seen.clear()
        runner("train", f"estimator={estimator}", "batch_size=16", "max_steps=30", *FAST)
        runs[estimator] = dict(seen)
    fwd, bwd = runs["forward"], runs["backward"]
    assert all(torch.equal(fwd["init"][0][k], bwd["init"][0][k]) for k in fwd["init"][0])
    # the first recorded objective is the untimed warm-up on the first rows
    assert len(fwd["batches"]) == len(bwd["batches"]) == 31
    assert all(torch.equal(a, b) for a, b in zip(fwd["batches"], bwd["batches"]))
    assert not torch.equal(fwd["batches"][1], fwd["batches"][2])  # batches do change


def test_same_seed_twice_gives_the_same_metrics(runner):
    args = ("train", "batch_size=32", "max_steps=40", "seed=3", *FAST)
    first, second = runner(*args)[0], runner(*args)[0]
    a, b = (pd.read_csv(r / "metrics.csv").drop(columns=TIME_COLUMNS) for r in (first, second))
    pd.testing.assert_frame_equal(a, b)
    other = pd.read_csv(runner("train", *args[1:3], "seed=4", *FAST)[0] / "metrics.csv")
    assert not other["batch_loss"].equals(a["batch_loss"])


def test_threshold_stops_on_the_whole_training_loss(runner):
    (run,) = runner("train", "model=logreg", "estimator=backward", "optimizer.lr=0.2",
                    "stop_below=0.3", "max_steps=5000", *FAST)
    frame, summary = load_run(run)
    assert summary["stop_reason"] == "threshold"
    assert frame["train_loss"].iloc[-1] < 0.3 <= frame["train_loss"].iloc[-2]
    assert frame["train_loss"].notna().all()  # evaluated after every step, as report 000 does


def test_a_diverging_run_stops_and_keeps_its_outputs(runner):
    (run,) = runner("train", "estimator=backward", "optimizer.lr=1e6",
                    "max_steps=200", "eval_every=5")
    frame, summary = load_run(run)
    assert summary["stop_reason"] == "diverged"
    assert summary["steps"] == len(frame) < 200
    assert (run / "loss.png").exists() and (run / "model.pt").exists()


def test_interrupt_finishes_the_step_and_keeps_every_finished_one(runner, monkeypatch):
    """SIGINT during the 6th step: that step completes, the run stops as `interrupted` with
    every output written, and the command exits 130 (128 + SIGINT)."""
    import os
    import signal

    from gradbench.estimators import Backward

    calls, original = {"n": 0}, Backward.__call__

    def interrupting(self, objective, params):
        calls["n"] += 1
        if calls["n"] == 7:  # warm-up call + 5 steps, then Ctrl-C during the 6th
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, objective, params)

    monkeypatch.setattr(Backward, "__call__", interrupting)
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "estimator=backward", "max_steps=100", *FAST)
    assert exit_info.value.code == 130
    (run,) = [p.parent for p in runner.cwd.rglob("summary.json")]
    frame, summary = load_run(run)
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == len(frame) == 6
    assert (run / "checkpoint.pt").exists() and (run / "model.pt").exists()


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=0", "optimizer.lr must be a finite number > 0, got 0"),
    ("optimizer.lr=-0.1", "optimizer.lr must be a finite number > 0, got -0.1"),
    ("batch_size=0", "batch_size must be a positive integer or null, got 0"),
    ("batch_size=205", "batch_size must be <= the training split size (204)"),
    ("model.activation=gelu", "model.activation must be one of relu | sigmoid | tanh | softplus, got 'gelu'"),
    ("estimator.tangent=uniform", "estimator.tangent must be one of normal | rademacher, got 'uniform'"),
    ("device=tpu", "device must be auto | cpu | cuda | cuda:N | mps, got 'tpu'"),
    ("dtype=float16", "dtype must be one of float32 | float64, got 'float16'"),
])
def test_bad_input_gets_a_clear_error_before_training(runner, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", override, *FAST)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(runner.cwd.rglob("metrics.csv"))  # nothing trained


def test_unknown_group_option_names_the_choices(runner):
    result = runner.subprocess("train", "model=transformer", check=False)
    assert result.returncode != 0
    assert "Could not find 'model/transformer'" in result.stderr
    assert "mlp" in result.stderr and "logreg" in result.stderr


def test_sweep_of_estimators_and_models_gives_four_complete_runs(runner):
    """The installed script, as a user types it: -m over two groups → four run dirs."""
    result = runner.subprocess("train", "-m", "estimator=forward,backward", "model=logreg,mlp",
                               "max_steps=30", "eval_every=10")
    runs = sorted(p.parent for p in runner.cwd.glob("outputs/multirun/*/*/*/summary.json"))
    assert len(runs) == 4
    seen = set()
    for run in runs:
        for name in RUN_FILES:
            assert (run / name).exists(), (run, name)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["stop_reason"] == "max_steps"
        seen.add((summary["choices"]["estimator"], summary["choices"]["model"]))
    assert seen == {(e, m) for e in ("forward", "backward") for m in ("logreg", "mlp")}
    assert "stopped: max_steps" in result.stderr + result.stdout


def test_help_lists_groups_and_options(runner):
    out = runner.subprocess("train", "--help").stdout
    groups = {line.split(": ")[0]: line.split(": ")[1].split(", ")
              for line in out.splitlines() if ": " in line and "," in line}
    assert {"backward", "forward"} <= set(groups["estimator"])
    assert {"logreg", "mlp"} <= set(groups["model"]) and {"penguins", "toy"} <= set(groups["dataset"])
    assert {"sgd", "adam"} <= set(groups["optimizer"]) and "gradbench train" in out
    top = runner.subprocess("--help").stdout
    assert "train" in top and "check" in top and "report" in top


def test_cfg_job_prints_the_composed_config(runner):
    out = runner.subprocess("train", "model=logreg", "--cfg", "job").stdout
    assert "hidden: []" in out and "_target_: gradbench.estimators.Forward" in out


def test_plots_are_redrawn_from_the_csv_alone(runner):
    from gradbench.present.plots import plot_run

    (run,) = runner("train", "max_steps=10", "eval_every=5", "plot=false")
    assert not (run / "loss.png").exists()
    written = plot_run(run)
    assert sorted(p.name for p in written) == ["accuracy.png", "errors.png", "loss.png"]


def test_shell_completion_as_hydra_provides_it(runner):
    script = runner.subprocess("train", "--shell-completion", "install=bash").stdout
    assert "complete -o nospace -o default -F hydra_bash_completion gradbench" in script
    # what the installed script asks: the whole line, command word included
    def complete(line: str) -> list[str]:
        result = runner.subprocess("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert result.stderr == ""
        return result.stdout.split()

    assert {"model=logreg", "model=mlp", "model=cnn"} <= set(complete("gradbench train model="))
    assert {"estimator=", "estimator."} <= set(complete("gradbench bench model=logreg est"))
    assert {"train", "report", "bench-report"} <= set(complete("gradbench re"))  # the shell keeps report*
    assert complete("gradbench report outputs/") == []  # no choices: the shell completes the path


def test_the_plots_module_without_a_run_dir_prints_its_usage():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "gradbench.present.plots"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("usage: python -m gradbench.present.plots RUN_DIR")
