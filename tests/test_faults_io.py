"""Faults around the outputs: a signal during the end writes, a full disk, temporary files left
by a kill, keys that must not count as result-neutral, an empty bench batch list.

A full disk is made real with a file size limit (RLIMIT_FSIZE) in a subprocess: every write past
it fails with EFBIG, in Python, torch and matplotlib alike; ENOSPC itself is raised by a patched
writer in-process.
"""

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import GRADBENCH
from gradbench.cli import main
from gradbench.errors import WriteFailed
from gradbench.run.metrics import atomic_write, read_metrics

QUIET = ["threads=1", "log_every_s=1000"]
LIMIT = 20_000  # bytes: checkpoint (15 kB), model (8 kB), summary and configs fit; the PNGs (65 kB) do not
# metrics.csv with eval_every=1 grows ~210 bytes a step: past LIMIT near step 95
PAUSE = """
import os, time
target, mark = os.environ["GB_PAUSE_AT"], os.environ["GB_PAUSE_MARK"]
replace = os.replace

def paused(src, dst, *args, **kwargs):  # hold the first write of `target` just before its rename
    if os.path.basename(dst) == target and not os.path.exists(mark):
        open(mark, "w").close()
        time.sleep(3)
    return replace(src, dst, *args, **kwargs)

os.replace = paused
from gradbench.cli import main
main()
"""


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def whole(path: Path) -> bool:
    """The file is complete: it parses (JSON, torch) or ends with its format's trailer (PNG)."""
    if path.suffix == ".pt":
        torch.load(path, weights_only=False)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".png":
        return path.read_bytes().endswith(b"IEND\xaeB`\x82")
    return path.stat().st_size > 0


def gradbench_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gradbench:")]


@pytest.mark.slow  # ~28 s: subprocess runs signalled twice (make test-slow; CI runs it)
@pytest.mark.parametrize("at", ["checkpoint.pt", "loss.png"])
def test_sigterm_during_the_end_writes_lets_them_finish_then_exits_143(tmp_path, at, processes):
    """The signal comes while the final checkpoint (or the first plot) is being written: every
    output is still written, the summary says how the run stopped, then one line and exit 143."""
    run = tmp_path / "run"
    script = tmp_path / "pause.py"
    script.write_text(PAUSE)
    process = processes.start(
        [sys.executable, str(script), "train", "max_steps=30", "eval_every=10", "checkpoint_every=null", *QUIET,
         f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GB_PAUSE_AT": at, "GB_PAUSE_MARK": str(tmp_path / "paused")})
    wait_for(tmp_path / "paused")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert gradbench_lines(stderr) == [f"gradbench: SIGTERM while writing the outputs of a run stopped on max_steps "
                                       f"after 30 steps; they are all in {run}"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "max_steps" and summary["steps"] == 30
    assert {"checkpoint.pt", "model.pt", "loss.png", "accuracy.png", "errors.png"} <= set(summary["outputs"])
    assert all(whole(run / name) for name in summary["outputs"])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 30


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def limited(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GRADBENCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size)


def assert_no_partial_output(run: Path) -> None:
    assert not list(run.glob(".*.tmp"))
    for path in run.iterdir():
        # metrics.csv is appended by design (a cut last row is dropped on read); dotfiles: locks
        if path.is_file() and path.name != "metrics.csv" and not path.name.startswith("."):
            assert whole(path), path


@pytest.mark.parametrize("fails, args", [("metrics.csv", ["max_steps=300", "plot=false"]),
                                         (r"\w+\.png", ["max_steps=20", "plot=true"])])
def test_a_full_disk_is_one_line_and_no_partial_output(tmp_path, fails, args):
    """The CSV fills the disk during training, or a plot does at the end: one line naming the
    file, exit 1, no traceback (the log's own failed writes add none), and every file under a
    final name whole: model.pt and summary.json loadable, no empty or cut PNG, no .tmp left."""
    run = tmp_path / "run"
    result = limited(tmp_path, "train", *args, "eval_every=1", "checkpoint_every=null", *QUIET, f"hydra.run.dir={run}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr and "Logging error" not in result.stderr
    (line,) = gradbench_lines(result.stderr)
    assert re.fullmatch(rf"gradbench: error: writing {re.escape(str(run))}/{fails} failed: file too large", line), line
    assert_no_partial_output(run)
    assert list(read_metrics(run / "metrics.csv")["step"]) == list(range(1, len(read_metrics(run / "metrics.csv")) + 1))


def test_a_full_disk_in_a_sweep_fails_that_job_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    result = limited(tmp_path, "train", "-m", "max_steps=5,300,6", "eval_every=1", "checkpoint_every=null",
                     "plot=false", *QUIET, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "sweep done: 2 finished, 0 diverged, 1 failed, 0 skipped" in result.stdout + result.stderr
    stops = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert [stops[job]["stop_reason"] for job in "012"] == ["max_steps", "failed", "max_steps"]
    assert stops["1"]["error"] == f"WriteFailed: writing {sweep / '1' / 'metrics.csv'} failed: file too large"
    for job in "012":
        assert_no_partial_output(sweep / job)


class Full:
    """A file on a disk that fills after `room` bytes."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    """ENOSPC half-way: the message names the file, the old file stays whole, no .tmp is left;
    torch.save's RuntimeError around the OSError is seen through."""
    for name, write in [("summary.json", lambda f: Full(f, 4).write("0123456789")),
                        ("checkpoint.pt", lambda f: torch.save({"x": torch.zeros(1000)}, Full(f, 100)))]:
        path = tmp_path / name
        path.write_text("old")
        with pytest.raises(WriteFailed) as failure:
            atomic_write(path, write, binary=name.endswith(".pt"))
        assert str(failure.value) == f"writing {path} failed: no space left on device"
        assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "summary.json"]


def test_a_full_disk_at_the_final_checkpoint_is_one_line(runner, monkeypatch, capsys):
    """In-process, the final checkpoint hits ENOSPC: one line naming it, exit 1, no checkpoint.pt
    under its name, no .tmp left."""
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: save(obj, Full(f, 1000), *a, **k))
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "max_steps=3", "checkpoint_every=null", "plot=false", *QUIET,
               f"hydra.run.dir={runner.cwd / 'run'}")
    assert exit_info.value.code == 1
    run = runner.cwd / "run"
    assert gradbench_lines(capsys.readouterr().err) == [
        f"gradbench: error: writing {run / 'checkpoint.pt'} failed: no space left on device"]
    assert not (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    assert_no_partial_output(run)


def test_resume_removes_the_temporary_files_of_a_killed_write(runner):
    (run,) = runner("train", "max_steps=4", "checkpoint_every=2", "plot=false", *QUIET)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = [run / f".checkpoint.pt.{gone.pid}.tmp", run / f".model.pt.{gone.pid}.tmp"]
    live = run / f".summary.json.{os.getppid()}.tmp"  # a live process's write: not ours to remove
    for path in [*stale, live]:
        path.write_bytes(b"PK\x03")
    runner("train", f"resume={run}", "max_steps=6")
    assert [p.exists() for p in stale] == [False, False] and live.exists()
    assert list(read_metrics(run / "metrics.csv")["step"]) == [1, 2, 3, 4, 5, 6]


def test_eval_chunk_is_a_result_key(runner, capsys):
    """One row per forward pass takes another BLAS path than 4096 rows: the evaluation losses
    differ in their last bits, so a run with another eval_chunk is another run (resume refuses
    it, the report groups it apart)."""
    sweep = runner.cwd / "sweep"
    runner("train", "-m", "eval_chunk=4096,1", "max_steps=20", "eval_every=5", "plot=false", *QUIET,
           f"hydra.sweep.dir={sweep}")
    with pytest.raises(SystemExit) as exit_info:
        runner("train", f"resume={sweep / '0'}", "eval_chunk=1")
    assert exit_info.value.code == 2 and "eval_chunk: 4096 → 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(sweep), "--no-plots"])
    assert len(pd.read_csv(sweep / "table.csv")) == 2


def test_bench_refuses_an_empty_batch_size_list(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("bench", "bench.batch_sizes=[]")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "gradbench: error: bench.batch_sizes must be a non-empty list of positive batch sizes or null "
        "(the run's batch_size), got []")
