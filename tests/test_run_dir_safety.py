"""A run dir is data, never code; a failed command never damages a finished run (issue 17).

Each test plants a payload or a fault in a copy of one tiny finished penguins run, runs the
real CLI in-process (one concurrent writer as a subprocess), and checks the one-line refusal,
that nothing planted was called, and that the run's files are byte for byte what they were.
"""

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import FAST, GRADBENCH
from gradbench.run import rundir
from gradbench.run.checkpoint import differences as rundir_differences
from gradbench.cli import main
from gradbench.errors import Interrupted, OccupiedRunDir, hydra_quote
from gradbench.run.metrics import read_metrics


def status(argv: list[str]) -> int:
    """`gradbench ARGV` in-process: its exit status (0 when it returns)."""
    try:
        main(argv)
    except SystemExit as e:
        return e.code or 0
    return 0


def snapshot(run: Path) -> dict[str, str]:
    """Every file under the run dir → the sha256 of its bytes."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished 20-step run (checkpoint, model.pt, summary), trained once for the module."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert status(["train", "max_steps=20", *FAST, f"hydra.run.dir={run}"]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


OPEN = "{_target_: builtins.open, file: %s, mode: w}"


def plant_summary(run: Path, mark: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary["config"]["dataset"]["val_fraction"] = {"_target_": "builtins.open", "file": str(mark), "mode": "w"}
    (run / "summary.json").write_text(json.dumps(summary))


def plant_overrides(line: str):
    def plant(run: Path, mark: Path) -> None:
        path = run / ".hydra" / "overrides.yaml"
        path.write_text(yaml.safe_dump([*yaml.safe_load(path.read_text()), line.replace("MARK", str(mark))]))
    return plant


def plant_checkpoint(run: Path, mark: Path) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["model"]["hidden"] = {"_target_": "builtins.open", "file": str(mark), "mode": "w"}
    torch.save(state, run / "checkpoint.pt")


def plant_pickle(name: str):
    class Payload:  # unpickling calls open(mark, "w"): what a torch.load(weights_only=False) would run
        def __init__(self, mark):
            self.mark = mark

        def __reduce__(self):
            return open, (str(self.mark), "w")

    def plant(run: Path, mark: Path) -> None:
        torch.save({"state_dict": {}, "payload": Payload(mark)}, run / name)
    return plant


def plant_model(run: Path, mark: Path) -> None:
    saved = torch.load(run / "model.pt", weights_only=True)
    saved["model"] = {"_target_": "builtins.open", "file": str(mark), "mode": "w"}
    torch.save(saved, run / "model.pt")


RESUME = ["max_steps=30"]
PAYLOADS = {  # name → (plant, command, file and key the refusal names)
    "summary.json": (plant_summary, "eval", ["summary.json", "config.dataset.val_fraction._target_"]),
    "overrides.yaml target": (plant_overrides("dataset.val_fraction=" + OPEN % "MARK"), "resume",
                              ["overrides.yaml", "dataset.val_fraction._target_"]),
    "overrides.yaml hydra callback": (plant_overrides("+hydra.callbacks.evil=" + OPEN % "MARK"), "resume",
                                      ["overrides.yaml", "hydra.callbacks.evil is a Hydra setting"]),
    "overrides.yaml resolver": (plant_overrides("dataset.name='${oc.create:x}'"), "resume",
                                ["overrides.yaml", "dataset.name", "resolver call"]),
    "overrides.yaml group outside conf": (plant_overrides("model=../../../../tmp/evil"), "resume",
                                          ["overrides.yaml", "model="]),
    "checkpoint.pt config": (plant_checkpoint, "resume", ["checkpoint.pt", "config.model.hidden._target_"]),
    "checkpoint.pt pickle": (plant_pickle("checkpoint.pt"), "resume", ["checkpoint.pt is unreadable"]),
    "model.pt metadata": (plant_model, "eval", ["model.pt", "model._target_"]),
    "model.pt pickle": (plant_pickle("model.pt"), "eval", ["model.pt is unreadable"]),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_run_dir_cannot_make_gradbench_call_anything(run, tmp_path, capsys, payload):
    """Whatever a run dir's files name, nothing is called: the command exits 2 with one line
    naming the file and the key, before it writes anything."""
    plant, command, named = PAYLOADS[payload]
    mark = tmp_path / "called"
    plant(run, mark)
    before = snapshot(run)
    argv = ["eval", str(run)] if command == "eval" else ["train", f"resume={run}", *RESUME]
    capsys.readouterr()
    assert status(argv) == 2
    err = one_line(capsys)
    assert all(text in err for text in named), err
    assert not mark.exists()
    assert snapshot(run) == before


def test_a_group_option_outside_the_config_dirs_is_refused(run, tmp_path, capsys):
    """`model=../../…/evil` naming a YAML file that EXISTS outside conf/ (a file that does not
    exist is refused before the path guard is reached): resolved, it is not inside the group's
    folder, so resume refuses in one line and the file's `_target_` is never called."""
    from gradbench.paths import CONF

    mark = tmp_path / "called"
    evil = tmp_path / "evil.yaml"
    evil.write_text(yaml.safe_dump({"_target_": "builtins.open", "file": str(mark), "mode": "w"}))
    option = os.path.relpath(evil.with_suffix(""), Path(CONF) / "model")
    assert (Path(CONF) / "model" / f"{option}.yaml").resolve() == evil.resolve()  # the payload names it
    plant_overrides(f"model={option}")(run, mark)
    before = snapshot(run)
    capsys.readouterr()
    assert status(["train", f"resume={run}", *RESUME]) == 2
    err = one_line(capsys)
    assert "overrides.yaml" in err and "is not an option of the config group 'model'" in err, err
    assert not mark.exists()
    assert snapshot(run) == before


# Keys whose change changes the result (stated here, not read from checkpoint.NEUTRAL, the list
# under test) and keys that change none: where output goes, how often it is logged, threads.
RESULT_KEYS = {"optimizer.lr": 0.1, "optimizer.momentum": 0.0, "model.hidden": [8], "estimator.num_tangents": 1,
               "dataset.name": "penguins", "seed": 0, "batch_size": None, "schedule.rate": 0.0, "eval_chunk": 4096}
NEUTRAL_KEYS = {"threads": 1, "plot": True, "log_every_s": 10, "logger": "csv", "save_model": True,
                "checkpoint_every": 100, "resume": False, "skip_done": False}


def nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


@pytest.mark.parametrize("key", RESULT_KEYS)
def test_result_changing_keys_are_differences_and_neutral_ones_are_not(key):
    """A stored run and this command differ in one key: a result-changing key is named (resume
    then refuses to continue the run under another config); a neutral key is not."""
    stored = nested({**RESULT_KEYS, **NEUTRAL_KEYS})
    changed = nested({**RESULT_KEYS, key: "other", **{k: "other" for k in NEUTRAL_KEYS}})
    assert rundir_differences(stored, changed) == [f"{key}: {RESULT_KEYS[key]!r} → 'other'"]


def test_resuming_under_another_optimizer_is_refused(run, capsys):
    before = snapshot(run)
    capsys.readouterr()
    assert status(["train", f"resume={run}", *RESUME, "optimizer.lr=0.5"]) == 2
    assert "holds a run of another config (optimizer.lr: 0.05 → 0.5)" in one_line(capsys)
    assert snapshot(run) == before


BREAKS = {  # name → (how the finished run is broken, resume overrides, the file the refusal names)
    "garbage metrics.csv": (lambda r: (r / "metrics.csv").write_text("step,what\nnot,a,row\n"), RESUME,
                            "metrics.csv"),
    "text cell in metrics.csv": (lambda r: (r / "metrics.csv").write_text(
        (r / "metrics.csv").read_text().replace("\n3,", "\nthree,", 1)), RESUME, "metrics.csv"),
    "rows missing from metrics.csv": (lambda r: (r / "metrics.csv").write_text(
        "".join((r / "metrics.csv").read_text().splitlines(keepends=True)[:5])), RESUME, "metrics.csv"),
    "truncated checkpoint.pt": (lambda r: (r / "checkpoint.pt").write_bytes((r / "checkpoint.pt").read_bytes()[:300]),
                                RESUME, "checkpoint.pt is unreadable"),
    "checkpoint.pt of another shape": (lambda r: torch.save({"step": 20}, r / "checkpoint.pt"), RESUME,
                                       "checkpoint.pt is not a gradbench checkpoint"),
    "smaller max_steps": (lambda r: None, ["max_steps=10"], "past max_steps=10"),
    "the same max_steps": (lambda r: None, ["max_steps=20"], "finished at step 20 (max_steps): max_steps=20"),
}


@pytest.mark.parametrize("fault", BREAKS)
def test_a_resume_that_cannot_go_on_refuses_and_leaves_the_run_byte_identical(run, capsys, fault):
    breaks, overrides, named = BREAKS[fault]
    breaks(run)
    before = snapshot(run)
    capsys.readouterr()
    assert status(["train", f"resume={run}", *overrides]) == 2
    assert named in one_line(capsys)
    assert snapshot(run) == before


def test_resuming_a_diverged_run_is_refused_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "diverged"
    assert status(["train", "optimizer.lr=1e6", "estimator=forward", "dtype=float64", "max_steps=200", *FAST,
                   f"hydra.run.dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "diverged"
    before = snapshot(run)
    for _ in range(2):
        capsys.readouterr()
        assert status(["train", f"resume={run}", "max_steps=300"]) == 2
        assert f"diverged at step {summary['steps']}: nothing to continue" in one_line(capsys)
    assert snapshot(run) == before


def test_the_lock_admits_one_holder(tmp_path):
    """Two holders of the run dir's lock (two open files, as two processes have): the second is
    refused at once, naming the first one's PID; after the first lets go, it is free again."""
    with rundir.lock(tmp_path):
        with pytest.raises(OccupiedRunDir, match=f"another gradbench process \\(PID {os.getpid()}\\)"):
            with rundir.lock(tmp_path):
                pass
    with rundir.lock(tmp_path):
        pass


def test_a_second_writer_is_refused_with_the_holders_pid(run, capsys, processes):
    """A real concurrent `resume=RUN`: the second one is refused naming the first one's PID;
    the lock goes with the process, even on kill -9."""
    first = processes.start([GRADBENCH, "train", f"resume={run}", "max_steps=100000000", "threads=1"],
                            cwd=run.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(run / "metrics.csv")) <= 20:  # the first one is training
            assert first.poll() is None and time.monotonic() < deadline, "the first writer never trained"
            time.sleep(0.1)
        capsys.readouterr()
        # a budget a few hundred steps past the first one's: were the lock not exclusive, this
        # second writer would train those steps and return within seconds, failing the test
        # rather than hanging it
        budget = len(read_metrics(run / "metrics.csv")) + 300
        assert status(["train", f"resume={run}", f"max_steps={budget}", "threads=1"]) == 2
        assert f"is being written by another gradbench process (PID {first.pid})" in one_line(capsys)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with rundir.lock(run):  # released by the kernel
        pass


def test_skip_done_continues_runs_whose_stop_rules_allow_more(tmp_path, monkeypatch):
    """A sweep finished at max_steps 10, relaunched with max_steps 15, skip_done and resume:
    each job continues from its checkpoint to 15; launched once more, each is skipped."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    base = ["train", "-m", "seed=0,1", *FAST, f"hydra.sweep.dir={sweep}"]
    assert status([*base, "max_steps=10"]) == 0
    for expected in ("finished", "skipped"):
        assert status([*base, "max_steps=15", "skip_done=true", "resume=true"]) == 0
        outcomes = [p.read_text() for p in sorted((sweep / ".gradbench" / "outcomes").iterdir())]
        assert outcomes == [expected, expected]
        for job in ("0", "1"):
            assert list(read_metrics(sweep / job / "metrics.csv")["step"]) == list(range(1, 16))
            assert json.loads((sweep / job / "summary.json").read_text())["steps"] == 15


@pytest.mark.parametrize("content", ["not json {", "[]", '"x"'])
def test_eval_of_a_broken_summary_or_model_is_one_line(run, capsys, content):
    (run / "summary.json").write_text(content)
    capsys.readouterr()
    assert status(["eval", str(run)]) == 2
    assert "summary.json" in one_line(capsys)


def test_eval_of_a_corrupt_model_is_one_line(run, capsys):
    (run / "model.pt").write_bytes(b"PK\x03\x04 not really a zip")
    capsys.readouterr()
    assert status(["eval", str(run)]) == 2
    assert "model.pt is unreadable" in one_line(capsys)


def test_report_skips_and_lists_runs_of_the_wrong_shape(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    assert status(["train", "-m", "seed=0,1,2,3,4", "max_steps=4", *FAST, f"hydra.sweep.dir={sweep}"]) == 0
    (sweep / "1" / "summary.json").write_text("[]")
    (sweep / "2" / "summary.json").write_text('"x"')
    summary = json.loads((sweep / "3" / "summary.json").read_text())
    (sweep / "3" / "summary.json").write_text(json.dumps({**summary, "final": "oops"}))
    csv = sweep / "4" / "metrics.csv"
    csv.write_text(csv.read_text().replace("\n2,", "\ntwo,", 1))
    capsys.readouterr()
    assert status(["report", str(sweep), "--no-plots"]) == 0
    assert capsys.readouterr().err.count("skipped broken run dir") == 4
    assert pd.read_csv(sweep / "table.csv")["n"].tolist() == [1]
    assert (sweep / "table.md").read_text().count("broken run dir, left out") >= 1


def test_a_run_dir_with_a_comma_and_a_non_ascii_letter_resumes_by_the_printed_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "lr=0.1,seed=0 é"
    assert status(["train", "max_steps=5", *FAST, f"hydra.run.dir={hydra_quote(str(run))}"]) == 0
    message = str(Interrupted(signal.SIGTERM, run, 5))
    command = shlex.split(message.split("continue with: ")[1].rstrip(")"))  # as a POSIX shell splits it
    assert command[:2] == ["gradbench", "train"]
    assert status([*command[1:], "max_steps=8"]) == 0
    assert list(read_metrics(run / "metrics.csv")["step"]) == list(range(1, 9))
    assert not (tmp_path / "outputs").exists()  # no stray run dir: it wrote into the one it resumed
