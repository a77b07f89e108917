"""The command line itself: what help and completion import, each command's help, one-line
errors (exit 2) for bad input, Ctrl-C during start-up, the data root, diverged runs and the
TensorBoard logger."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import pytest
import torchvision
from image_fixtures import write_mnist

from gradbench.cli import CONF, main

from conftest import FAST, GRADBENCH, load_run, run_dirs

HEAVY = ("torch", "torchvision", "pandas", "matplotlib")
DATASETS = sorted(p.stem for p in (Path(CONF) / "dataset").glob("*.yaml"))
WITH_FILES = {"mnist", "cifar10", "cifar10_carcat"}  # the datasets read from the data root


@pytest.fixture
def offline(monkeypatch):
    """Every torchvision download fails as it does without network."""
    def refuse(url, *args, **kwargs):
        raise URLError("simulated offline")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)


def imported_by(*argv: str, env: dict | None = None) -> set[str]:
    """The heavy modules `gradbench ARGV` has imported when it is done (a fresh interpreter)."""
    code = ("import sys; from gradbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('IMPORTED', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=300)
    line = [x for x in result.stdout.splitlines() if x.startswith("IMPORTED")][-1]
    return set(eval(line.removeprefix("IMPORTED ")))


def test_help_and_completion_import_no_torch_pandas_or_matplotlib():
    assert imported_by("--help") == set()
    assert imported_by("-sc", "query=bash", env={"COMP_LINE": "gradbench tr", "COMP_POINT": "12"}) == set()
    line = "gradbench train model="
    assert imported_by("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))}) == set()
    assert imported_by("train", "--help") == set()


@pytest.mark.parametrize("command", ["train", "check", "variance", "bench", "data", "report", "bench-report",
                                     "eval", "functions"])
def test_every_commands_help_imports_no_torch_pandas_or_matplotlib(command):
    """Every `--help` stays instant: none of the seconds-long imports (the plain commands' options
    live in gradbench.commands.arguments, standard library only)."""
    assert imported_by(command, "--help") == set()


def test_train_help_lists_the_groups_that_need_a_plus_with_their_plus(runner, capsys):
    with pytest.raises(SystemExit):
        runner("train", "--help")
    groups = capsys.readouterr().out.split("== Configuration groups ==")[1].split("== Launchers")[0]
    lines = {line.split(":")[0]: line for line in groups.splitlines() if ": " in line}
    for group in ("experiment", "protocol", "benchmark", "optimizer/preset"):  # not in config.yaml's defaults list
        assert f"+{group}" in lines and group not in lines, groups
    for group in ("dataset", "model", "estimator", "optimizer", "schedule"):
        assert group in lines and f"+{group}" not in lines
    assert lines["model"].endswith("beale, cnn, cnn_paper, logreg, mlp, rosenbrock, sphere, toynet")


@pytest.mark.parametrize("command, keys, example", [
    ("train", None, "gradbench train model=logreg"),
    ("check", "check:", "gradbench check model=mlp"),
    ("bench", "bench:", "gradbench bench +benchmark=penguins_mlp"),
    ("data", "data_root:", "gradbench data dataset=mnist"),
    ("variance", "variance:", "gradbench variance"),
])
def test_each_hydra_command_has_its_own_help(runner, capsys, command, keys, example):
    with pytest.raises(SystemExit) as exit_info:  # Hydra exits 0 after the help
        runner(command, "--help")
    assert not exit_info.value.code
    out = capsys.readouterr().out
    assert out.startswith(f"gradbench {command}: ") and f"Usage: gradbench {command} " in out
    assert example in out
    others = {"train", "check", "bench", "data"} - {command}
    assert not any(f"Usage: gradbench {other} " in out for other in others)
    if keys:  # the command's own keys, with their comments from conf/config.yaml
        assert f"== {command}'s own keys" in out and keys in out and "  # " in out.split("== Configuration groups")[0]


def test_an_unknown_key_is_one_line_exit_2(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "foo=1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gradbench: error: unknown key 'foo'") and err.count("\n") == 1, err
    assert not (runner.cwd / "outputs").exists()


@pytest.mark.parametrize("typo, closest", [("estimater=forward", "estimator"), ("max_step=3", "max_steps"),
                                           ("optimizer.lrr=0.1", "optimizer.lr"), ("model.hiden=[3]", "model.hidden")])
def test_a_typo_is_told_the_closest_key_first(runner, capsys, typo, closest):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", typo)
    err = capsys.readouterr().err
    key = typo.partition("=")[0]
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"gradbench: error: unknown key {key!r}: did you mean {closest!r}? ")
    assert err.index(closest) < err.index(f"+{key}=")  # the likely fix before the `+` that adds a new key


def test_a_missing_option_and_a_syntax_error_are_one_line_exit_2(runner, capsys):
    for args, part in ((["model=nope"], "Could not find 'model/nope'; options: beale, cnn"),
                       (["model.hidden=[1"], "cannot parse 'model.hidden=[1'")):
        with pytest.raises(SystemExit) as exit_info:
            runner("train", *args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and part in err, err


def test_eval_without_arguments_is_usage_on_stderr_exit_2(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("eval")
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.startswith("usage: gradbench eval RUN_DIR")


def test_ctrl_c_during_start_up_is_one_line_exit_130(tmp_path, processes):
    """SIGINT while the command still imports and composes: no KeyboardInterrupt traceback."""
    # as from a terminal: SIGINT at its default (a test run started in the background, `make test &`,
    # hands its children SIGINT ignored, and a process that ignores Ctrl-C rightly trains on)
    process = processes.start([GRADBENCH, "train", "max_steps=5"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.5)  # past Python's start-up, inside gradbench's imports (torch takes seconds)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gradbench: "), err


@pytest.mark.parametrize("dataset", DATASETS)
def test_data_root_from_a_local_config_reaches_every_dataset(runner, tmp_path, capsys, offline, dataset):
    """`data_root` in ~/my_conf/local/cluster.yaml: datasets without files ignore it; those with
    files look there, and with none there fail with their one-line message naming it."""
    root = tmp_path / "nowhere"
    (tmp_path / "my_conf" / "local").mkdir(parents=True)
    (tmp_path / "my_conf" / "local" / "cluster.yaml").write_text(f"# @package _global_\ndata_root: {root}\n")
    args = ("data", "--config-dir", str(tmp_path / "my_conf"), "local=cluster", f"dataset={dataset}")
    if dataset not in WITH_FILES:
        runner(*args)
        assert "input shape" in capsys.readouterr().out
        return
    with pytest.raises(SystemExit) as exit_info:
        runner(*args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert f"is not in the data root {root} " in err and "missing: " in err and "TypeError" not in err


def test_eval_with_its_data_gone_is_one_line_listing_the_missing_files(runner, tmp_path, capsys, offline):
    root = tmp_path / "data"
    write_mnist(root, n_train=40, n_test=10)
    [run] = runner("train", "dataset=mnist", f"data_root={root}", "dataset.val_size=10", "model=logreg",
                   "max_steps=2", *FAST)
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").unlink()
    for unpacked in (root / "MNIST" / "raw").glob("t10k-images-idx3-ubyte"):
        unpacked.unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        runner("eval", str(run))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    # the missing file alone, not the files that are there
    assert err.split("missing: ")[1].split(";")[0] == "MNIST/raw/t10k-images-idx3-ubyte" and "expected" not in err


def test_a_diverged_run_records_no_accuracy_and_says_where_it_diverged(runner):
    # report 000's MLP protocol with forward gradients: diverges for seed 0 (README)
    [run] = runner("train", "model.init.law=uniform", "optimizer=gd", "optimizer.lr=0.05", "eval_every=1",
                   "max_steps=200", "plot=false", "log_every_s=1000")
    frame, summary = load_run(run)
    step = summary["diverged_at_step"]
    assert summary["stop_reason"] == "diverged" and step == len(frame)
    for split in ("train", "val", "test"):
        assert summary["final"][split]["accuracy"] is None and summary["final"][split]["errors"] is None
        last = frame.iloc[-1]
        assert last[f"{split}_accuracy"] != last[f"{split}_accuracy"]  # an empty cell (NaN in pandas)
        assert frame[f"{split}_accuracy"].iloc[:-1].notna().all()  # the steps before are results
    assert "test_confusion" not in summary
    assert f"stopped: diverged at step {step} " in (run / "train.log").read_text()


def test_tensorboard_event_files_hold_the_csv_scalars(runner):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run] = runner("train", "logger=tensorboard", "max_steps=12", *FAST)
    frame, _ = load_run(run)
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for column in ("batch_loss", "lr", "train_loss", "val_accuracy", "test_errors", "step_time_s"):
        assert column in scalars
        logged = {e.step: e.value for e in events.Scalars(column)}
        expected = frame.dropna(subset=[column]).set_index("step")[column]
        assert sorted(logged) == list(expected.index)
        assert all(abs(logged[s] - v) <= 1e-6 * max(1, abs(v)) for s, v in expected.items())


def test_an_unknown_logger_is_one_line(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "logger=wandb", "max_steps=2")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "gradbench: error: In 'config': Could not find 'logger/wandb'; options: csv, mlflow, tensorboard\n"
