"""Progress bars on a terminal (training steps, sweep jobs), log lines alone everywhere else."""

from __future__ import annotations

import sys

from conftest import FAST, run_dirs


def as_terminal(monkeypatch) -> None:
    """stderr (pytest's capture, as the test body sees it: not yet in a fixture) answers as a
    terminal does."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)


def test_a_run_on_a_terminal_shows_a_step_bar(runner, capsys, monkeypatch):
    as_terminal(monkeypatch)
    runner("train", "max_steps=30", *FAST)
    err = capsys.readouterr().err
    assert "30/30" in err and "step" in err and "loss=" in err


def test_a_sweep_on_a_terminal_shows_jobs_done_of_all(runner, capsys, monkeypatch):
    as_terminal(monkeypatch)
    runner("train", "-m", "seed=0,1,2", "max_steps=3", *FAST)
    err = capsys.readouterr().err
    assert "sweep: 100%" in err and "3/3" in err and "job" in err
    assert len(run_dirs(runner.cwd)) == 3


def test_without_a_terminal_there_is_no_bar_only_the_log_lines(runner, capsys):
    assert not sys.stderr.isatty()
    [run] = runner("train", "max_steps=30", "eval_every=5", "plot=false", "log_every_s=0")
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "30/30" not in captured.err and "step/s" not in captured.err
    log = (run / "train.log").read_text()
    assert "step 30 | epoch 30 | batch loss" in log and "step 29 |" in log  # one line per step at log_every_s=0
