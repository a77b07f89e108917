"""Bad input: one line `gradbench: error: KEY must be ..., got ...`, exit status 2, before any
work, and no run dir left behind; torch's own errors name the group that caused them."""

import errno

import pytest

from conftest import run_dirs

CASES = [
    (["eval_every=abc"], "eval_every must be an integer, got 'abc'"),
    (["optimizer.lr=abc"], "optimizer.lr must be a number, got 'abc'"),
    (["optimizer.momentum=-1"], "optimizer.momentum must be in [0, 1), got -1"),
    (["optimizer.momentum=2"], "optimizer.momentum must be in [0, 1), got 2"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay must be >= 0, got -1"),
    (["optimizer.nesterov=true"], "optimizer.nesterov needs optimizer.momentum > 0, got True"),
    (["optimizer=adam", "optimizer.betas=[2,0.9]"], "optimizer.betas must be two numbers in [0, 1), got [2, 0.9]"),
    (["model.hidden=abc"], "model.hidden must be a list, got 'abc'"),
    (["model.hidden=[8,0]"], "model.hidden must be a list of positive sizes, got [8, 0]"),
    (["model.init.law=normal", "model.init.std=-1"], "model.init.std must be > 0, got -1"),
    (["model.init.law=uniform", "model.init.a=1", "model.init.b=0"],
     "model.init.b must be > model.init.a for the uniform law, got 0"),
    (["estimator.num_tangents=1.5"], "estimator.num_tangents must be an integer, got 1.5"),
    (["estimator.structure=rank2"], "estimator.structure must be one of dense | rank1, got 'rank2'"),
    (["stop_below=abc"], "stop_below must be a number > 0 or null, got 'abc'"),
    (["stop_below=-1"], "stop_below must be a number > 0 or null, got -1"),
    (["log_every_s=abc"], "log_every_s must be a number, got 'abc'"),
    (["threads=-1"], "threads must be auto, a positive integer or null, got -1"),
    (["threads=0"], "threads must be auto, a positive integer or null, got 0"),
    (["threads=many"], "threads must be auto, a positive integer or null, got 'many'"),
    (["deterministic=maybe"], "deterministic must be true or false, got 'maybe'"),
    (["diagnose=maybe"], "diagnose must be true or false, got 'maybe'"),
    (["save_model=maybe"], "save_model must be true or false, got 'maybe'"),
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["seed=1.5"], "seed must be an integer, got 1.5"),
    (["sweep_metric=val_foo"], "sweep_metric must be <split>_<metric>"),
    (["checkpoint_every=0"], "checkpoint_every must be a positive integer or null, got 0"),
    (["eval_chunk=0"], "eval_chunk must be >= 1, got 0"),  # else a traceback from torch.split
    (["max_epochs=0"], "max_epochs must be a positive integer or null, got 0"),  # else a 0-step run, exit 0
    (["eval_every=0"], "eval_every must be >= 1, got 0"),
    (["eval_splits=[foo]"], "eval_splits must be a subset of ['train', 'val', 'test'], got ['foo']"),
    (["model=toynet"], "model toynet learns from unlabelled inputs (report 002): use dataset=toy_inputs"),
    (["optimizer.momentum=0.9", "optimizer.nesterov=true", "+optimizer.dampening=0.5"],
     "optimizer (torch.optim.SGD): Nesterov momentum requires a momentum and zero dampening"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_input_is_one_line_before_any_work_and_leaves_no_run_dir(runner, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", *overrides, "max_steps=3")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gradbench: error: ") and err.count("\n") == 1, err
    assert message in err
    assert run_dirs(runner.cwd) == [] and not list((runner.cwd / "outputs").rglob("*.csv"))


def test_an_unknown_key_is_one_line_and_leaves_no_run_dir(runner):
    """`target_loss` was a key no code read: it is gone, and an unknown key is refused in one line."""
    result = runner.subprocess("train", "target_loss=0.3", check=False)
    assert result.returncode == 2 and result.stderr.startswith("gradbench: error: unknown key 'target_loss'")
    assert result.stderr.count("\n") == 1
    assert not (runner.cwd / "outputs").exists()


@pytest.mark.parametrize("run_dir, why", [("/proc/gradbench/run", "No such file or directory"),
                                          ("x" * 300, "File name too long")])
def test_a_run_dir_that_cannot_be_created_is_one_line(runner, run_dir, why):
    result = runner.subprocess("train", f"hydra.run.dir={run_dir}", "max_steps=2", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"gradbench: error: hydra.run.dir / hydra.sweep.dir cannot be created "
                                     f"({why}): {run_dir}")


def test_a_full_disk_mid_run_is_one_line_and_keeps_what_was_written(runner, capsys, monkeypatch):
    from gradbench.run.metrics import MetricsWriter

    real, rows = MetricsWriter.write, {"n": 0}

    def write(self, row):
        rows["n"] += 1
        if rows["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, row)

    monkeypatch.setattr(MetricsWriter, "write", write)
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "max_steps=10", "plot=false", "log_every_s=1000")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    (run,) = run_dirs(runner.cwd)
    assert (run / "metrics.csv").read_text().count("\n") == 4  # header + the 3 rows written


@pytest.mark.parametrize("sweep, job, message", [
    (["seed=0,1", "max_steps=abc"], "seed=0 max_steps=abc", "max_steps must be an integer, got 'abc'"),
    (["max_steps=3,0"], "max_steps=0", "max_steps must be a positive integer or null, got 0"),
    (["optimizer.lr=0.1,-1", "seed=0,1"], "optimizer.lr=-1 seed=0", "optimizer.lr must be a finite number > 0, got -1"),
])
def test_a_sweep_with_a_bad_job_is_refused_before_any_job_starts(runner, capsys, sweep, job, message):
    """Every job's config is checked before the first starts (gradbench.run.preflight): the bad
    job named by its overrides, one line, exit 2, no job dir (not even the good jobs')."""
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "-m", *sweep, "device=cpu", "plot=false")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err == f"gradbench: error: sweep job `{job} device=cpu plot=False`: {message} (no job was started)\n"
    assert run_dirs(runner.cwd) == []
    assert not any((runner.cwd / "outputs" / "multirun").rglob("*")) if (runner.cwd / "outputs").exists() else True
