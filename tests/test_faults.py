"""Runs that survive faults: kill -9 and resume, SIGTERM / SIGINT, parallel sweeps that die
with their parent, relaunched sweeps that train only what is missing, `gradbench eval`.

Subprocesses throughout (signals and kills need a process of their own), on penguins, CPU.
"""

import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import GRADBENCH, Processes, kill_all, load_run, processes_with, run_dirs, wait_until_gone
from gradbench.cli import main
from gradbench.run.metrics import read_metrics

TIME_COLUMNS = ["step_time_s", "train_time_s", "wall_time_s"]
# every kind of state a resume must restore: batch order (batch 16), tangents (forward),
# momentum buffers (sgd momentum) and the scheduler (exponential)
STATEFUL = ["estimator=forward", "batch_size=16", "optimizer.momentum=0.5", "optimizer.lr=0.01",
            "schedule=exponential", "schedule.rate=0.001", "eval_every=25", "checkpoint_every=7",
            "plot=false", "log_every_s=1000", "threads=1"]


def start(processes: Processes, cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`gradbench ARGS` in a process group of its own, killed when the test ends (conftest)."""
    return processes.start([GRADBENCH, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, **(env or {})})


# Deadlines are generous and polled: a run's first file comes after Python, torch and Hydra
# start (~5 s idle, ~30 s at load 8 on 2 cores), so waits for one get 120 s.
def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def wait_for_rows(path: Path, rows: int, timeout: float = 120) -> None:
    """Until metrics.csv (flushed after every row) holds `rows` steps."""
    deadline = time.monotonic() + timeout
    while path.read_bytes().count(b"\n") - 1 < rows:
        assert time.monotonic() < deadline, f"{path} never reached {rows} rows"
        time.sleep(0.002)


def comparable(path: Path) -> pd.DataFrame:
    return read_metrics(path).drop(columns=TIME_COLUMNS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run every resumed one must reproduce."""
    cwd = tmp_path_factory.mktemp("reference")
    subprocess.run([GRADBENCH, "train", *STATEFUL, "max_steps=600", "hydra.run.dir=run"], cwd=cwd, check=True,
                   capture_output=True)
    return comparable(cwd / "run" / "metrics.csv")


@pytest.mark.slow  # ~40 s over 3 seeds of the kill moment (make test-slow; CI runs it)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_moment_then_resume_equals_an_uninterrupted_run(tmp_path, reference, seed, processes):
    """After the first checkpoint, kill -9 at a seeded random step: metrics.csv holds whole,
    consecutive rows, the checkpoint loads, and `resume=RUN_DIR` completes the run with a
    metrics.csv equal to the uninterrupted one's, bit for bit but for the time columns."""
    run = tmp_path / "run"
    process = start(processes, tmp_path, "train", *STATEFUL, "max_steps=600", f"hydra.run.dir={run}")
    wait_for(run / "checkpoint.pt")
    # the moment is a step, not a time: a time lets a fast machine finish the run before the kill
    wait_for_rows(run / "metrics.csv", random.Random(seed).randint(8, 500))
    assert process.poll() is None, "the run ended before the kill"
    process.kill()
    process.wait()
    text = (run / "metrics.csv").read_text()
    rows = read_metrics(run / "metrics.csv")
    assert list(rows["step"]) == list(range(1, len(rows) + 1))  # whole rows, none twice
    assert len(text.splitlines()) - 1 - len(rows) in (0, 1)  # at most the row being written is cut
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert 7 <= state["step"] <= 600 and state["step"] % 7 == 0 or state["step"] == 600
    done = subprocess.run([GRADBENCH, "train", f"resume={run}"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    pd.testing.assert_frame_equal(comparable(run / "metrics.csv"), reference)
    assert json.loads((run / "summary.json").read_text())["stop_reason"] == "max_steps"


@pytest.mark.slow  # ~20 s: several runs to refuse (make test-slow; CI runs it)
def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, capsys):
    run = tmp_path / "run"
    subprocess.run([GRADBENCH, "train", *STATEFUL, "max_steps=20", f"hydra.run.dir={run}"], cwd=tmp_path,
                   check=True, capture_output=True)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    result = subprocess.run([GRADBENCH, "train", f"resume={run}", "optimizer.lr=0.02", "seed=3"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "holds a run of another config" in result.stderr
    assert "optimizer.lr: 0.01 → 0.02" in result.stderr and "seed: 0 → 3" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    # a larger budget is no other config: the finished run continues to 30 steps
    longer = subprocess.run([GRADBENCH, "train", f"resume={run}", "max_steps=30"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert list(read_metrics(run / "metrics.csv")["step"]) == list(range(1, 31))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly_with_every_output(tmp_path, signum, code, processes):
    run = tmp_path / "run"
    process = start(processes, tmp_path, "train", "max_steps=null", "max_epochs=null", "eval_every=50", "threads=1",
                    f"hydra.run.dir={run}")
    wait_for(run / "metrics.csv")
    wait_for_rows(run / "metrics.csv", 5)  # training, not starting
    process.send_signal(signum)
    # the run finishes its step and writes checkpoint, model, summary and plots (a few seconds idle)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code
    assert "Traceback" not in stderr and f"interrupted by {signal.Signals(signum).name}" in stderr
    frame, summary = load_run(run)
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == len(frame) > 0
    for name in ("checkpoint.pt", "model.pt", "loss.png", "accuracy.png"):
        assert (run / name).exists(), name


def test_sigterm_to_a_parallel_sweep_leaves_no_process_behind(tmp_path, processes):
    """The joblib workers die with their parent: SIGTERM reaches them, they finish their step,
    write their outputs and exit (within seconds, not 'training forever'). Every wait polls for
    its event with a deadline scaled to it; whatever the outcome, every process of the sweep is
    killed before the test ends (the `processes` fixture kills the group; the mark finds a worker
    that left it)."""
    marker = f"GRADBENCH_TEST_{uuid.uuid4().hex}"
    sweep = tmp_path / "sweep"
    process = start(processes, tmp_path, "train", "-m", "hydra/launcher=parallel", "threads=1", "seed=0,1,2,3",
                    "max_steps=100000", "plot=false", "log_every_s=1000", f"hydra.sweep.dir={sweep}",
                    env={marker: "1"})
    try:
        # both workers training: their metrics.csv exist and grow (start-up: up to ~1 min loaded)
        for job in ("0", "1"):
            wait_for(sweep / job / "metrics.csv")
            wait_for_rows(sweep / job / "metrics.csv", 5)
        process.send_signal(signal.SIGTERM)
        # each worker finishes its step and writes its outputs, then the parent reports: seconds
        # idle; 120 s covers a loaded machine
        process.communicate(timeout=120)
        left = wait_until_gone(lambda: processes_with(marker), timeout=60)
        assert left == {}, f"still running after SIGTERM: {left}"
    finally:
        kill_all(processes_with(marker))
    stopped = [json.loads(p.read_text())["stop_reason"] for p in sweep.glob("*/summary.json")]
    assert stopped and set(stopped) == {"interrupted"}


@pytest.mark.slow  # ~50 s: two sweeps and a kill (make test-slow; CI runs it)
def test_a_killed_sweep_relaunched_with_skip_done_trains_only_the_missing_jobs(tmp_path, processes):
    """Kill -9 the sweep half-way through its third job; relaunch with skip_done=true and
    resume=true added and the keys in another order: the finished jobs are skipped (counted),
    the third continues from its checkpoint, the fourth trains, and the report equals an
    uninterrupted sweep's."""
    args = ["seed=0,1,2,3", "max_steps=3000", "checkpoint_every=100", "model=logreg", "plot=false", "threads=1"]
    process = start(processes, tmp_path, "train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'a'}")
    wait_for(tmp_path / "a" / "2" / "checkpoint.pt")  # jobs 0 and 1 done, job 2 half-way
    process.kill()
    process.wait()
    finished = len(list((tmp_path / "a").glob("*/summary.json")))
    again = subprocess.run([GRADBENCH, "train", "-m", *reversed(args), "skip_done=true", "resume=true",
                            f"hydra.sweep.dir={tmp_path / 'a'}"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert f"{4 - finished} finished, 0 diverged, 0 failed, {finished} skipped" in log
    assert "resumed at step" in log  # the job killed half-way continued from its checkpoint
    subprocess.run([GRADBENCH, "train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'b'}"], cwd=tmp_path,
                   check=True, capture_output=True)
    tables = []
    for name in ("a", "b"):
        with pytest.raises(SystemExit):
            main(["report", str(tmp_path / name), "--no-plots"])
        table = pd.read_csv(tmp_path / name / "table.csv")
        tables.append(table[[c for c in table.columns if "time" not in c]])
    pd.testing.assert_frame_equal(*tables)


@pytest.mark.slow  # ~13 s: two sweeps (make test-slow; CI runs it)
def test_a_sweep_never_writes_into_a_dir_of_another_config(tmp_path):
    sweep = tmp_path / "sweep"
    subprocess.run([GRADBENCH, "train", "-m", "seed=0", "max_steps=5", "plot=false", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path, check=True, capture_output=True)
    before = (sweep / "0" / "summary.json").read_text(), (sweep / "0" / "metrics.csv").read_text()
    other = subprocess.run([GRADBENCH, "train", "-m", "seed=0", "max_steps=5", "optimizer.lr=0.3", "plot=false",
                            f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True)
    assert other.returncode == 1 and "0 finished, 0 diverged, 1 failed" in other.stdout + other.stderr
    assert "holds a run of another config (optimizer.lr: 0.05 → 0.3)" in other.stdout + other.stderr
    assert ((sweep / "0" / "summary.json").read_text(), (sweep / "0" / "metrics.csv").read_text()) == before


def test_a_summary_without_its_outputs_is_not_done(runner):
    """summary.json lists the outputs it promises; a run missing one is not finished."""
    from gradbench.run.job import finished_run

    (run,) = runner("train", "max_steps=5", "eval_every=5", "log_every_s=1000")
    assert finished_run(run) is not None
    (run / "loss.png").unlink()
    assert finished_run(run) is None
    assert finished_run(run.parent) is None  # no run there at all


def test_eval_reproduces_the_final_test_metrics_and_confusion_exactly(runner, capsys):
    (run,) = runner("train", "max_steps=30", "eval_every=10", "plot=false", "log_every_s=1000")
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run), "split=test", "predictions=true"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    test = summary["final"]["test"]
    assert f"loss {test['loss']:.6g}" in out and f"accuracy {test['accuracy']:.6g}" in out
    assert f"errors {test['errors']:.6g}" in out
    rows = [list(map(int, line.split("|")[1].split())) for line in out.splitlines() if line.startswith("   ")]
    assert rows == summary["test_confusion"]
    predictions = pd.read_csv(run / "predictions_test.csv")
    assert len(predictions) == 69 and (predictions["label"] != predictions["prediction"]).sum() == test["errors"]


def test_eval_names_what_is_wrong(runner, tmp_path, capsys):
    assert main_status(["eval", str(tmp_path)]) == 2
    assert "RUN_DIR must be a gradbench run dir" in capsys.readouterr().err
    (run,) = runner("train", "max_steps=3", "plot=false", "log_every_s=1000")
    assert main_status(["eval", str(run), "split=holdout"]) == 2
    assert "split must be one of train | val | test, got 'holdout'" in capsys.readouterr().err


def main_status(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_run_dirs_helper_sees_resumed_runs_once(runner):
    """A resumed run writes into its own dir: no second run dir appears."""
    (run,) = runner("train", "max_steps=4", "plot=false", "log_every_s=1000")
    runner("train", f"resume={run}", "max_steps=6")
    assert run_dirs(runner.cwd) == [run]
    assert list(read_metrics(run / "metrics.csv")["step"]) == [1, 2, 3, 4, 5, 6]


def test_float64_divergence_is_diverged_not_a_crash(runner):
    """Losses reach 1e30 and beyond before turning NaN: the plots clip them, the run is
    `diverged` with every output; in a sweep too (not `failed`)."""
    (run,) = runner("train", "optimizer.lr=1e6", "estimator=forward", "dtype=float64", "max_steps=200",
                    "log_every_s=1000")
    _, summary = load_run(run)
    assert summary["stop_reason"] == "diverged" and (run / "loss.png").exists()
    with pytest.raises(SystemExit) as exit_info:  # a sweep: diverged is no failure, exit 0
        runner("train", "-m", "optimizer.lr=1e6", "estimator=forward", "dtype=float64", "max_steps=200",
               "log_every_s=1000", f"hydra.sweep.dir={runner.cwd / 'sweep'}")
        raise SystemExit(0)
    assert exit_info.value.code == 0
    assert json.loads((runner.cwd / "sweep" / "0" / "summary.json").read_text())["stop_reason"] == "diverged"


def test_report_skips_and_lists_a_broken_run_and_reads_a_cut_csv(runner, capsys):
    sweep = runner.cwd / "sweep"
    runner("train", "-m", "seed=0,1,2", "max_steps=6", "eval_every=2", "plot=false", "log_every_s=1000",
           f"hydra.sweep.dir={sweep}")
    (sweep / "1" / "summary.json").write_text('{"stop_reason": "max_st')  # half-written
    csv = sweep / "2" / "metrics.csv"
    csv.write_text(csv.read_text() + "7,1,0.5")  # a row cut mid-line
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(sweep), "--no-plots"])
    assert exit_info.value.code == 0
    assert "skipped broken run dir" in capsys.readouterr().err
    table = pd.read_csv(sweep / "table.csv")
    assert table["n"].tolist() == [2]
    assert "broken run dir, left out" in (sweep / "table.md").read_text()
    assert read_metrics(csv)["step"].tolist() == [1, 2, 3, 4, 5, 6]
