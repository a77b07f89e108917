"""A run dir is inert data, for real (issue 21): hostile run dirs against every command.

Each test plants one payload in a copy of one tiny finished penguins run (or a sweep dir of
two), runs the real CLI in-process under a deadline, and checks: exit 2 with one line naming
the file (or the run listed as broken by `report`), the planted side effect never happens,
and every file outside the run is byte for byte what it was. The reader behind all of it is
gradbench/run/files.py.
"""

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FAST
from test_run_dir_safety import finished, one_line, run, snapshot, status  # noqa: F401  (fixtures)

DEADLINE_S = 60  # "a few seconds" on an idle machine; generous for 2 shared cores


@pytest.fixture(autouse=True)
def deadline():
    """Every command here must end: a hang (a FIFO, an alias bomb) fails the test instead."""
    def expired(signum, frame):
        raise TimeoutError(f"the command ran past {DEADLINE_S} s")

    saved = signal.signal(signal.SIGALRM, expired)
    signal.alarm(DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, saved)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A user's files outside the run (a stand-in for ~/.bashrc and the like)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# the user's own\n")
    (home / "notes.txt").write_text("keep me\n")
    return home


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def edit_summary(run: Path, change) -> None:
    summary = json.loads((run / "summary.json").read_text())
    change(summary)
    (run / "summary.json").write_text(json.dumps(summary))


def interpolation(mark: Path) -> str:
    """A resolver name built by interpolation: `${${x}.create:...}` is `${oc.create:...}`."""
    return "${${x}.create:{_target_: builtins.open, _args_: ['%s','w']}}" % mark


def sweep_of(run: Path, tmp_path: Path, plant=None) -> Path:
    """A sweep dir holding the run as job 1, planted there by `plant(job)` if given (a FIFO or a
    symlink does not survive a copy); `report` adds a clean job 0."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copytree(run, sweep / "1")
    if plant is not None:
        plant(sweep / "1")
    return sweep


@pytest.fixture
def clean(finished, tmp_path) -> Path:
    copy = tmp_path / "clean"
    shutil.copytree(finished, copy)
    return copy


def report(sweep: Path, clean: Path, capsys) -> str:
    """`gradbench report` on the sweep (with a clean job 0): exit 0, the planted job listed as broken."""
    shutil.copytree(clean, sweep / "0")
    assert status(["report", str(sweep), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert f"skipped broken run dir {sweep / '1'}" in err and "Traceback" not in err, err
    assert "1 runs in 1 groups" in err
    return err


# --- code from a planted run dir: resolver names built by interpolation --------------------------------------

def plant_summary_interpolation(run: Path, mark: Path) -> None:
    def change(s):
        s["config"]["x"] = "oc"
        s["config"]["dataset"]["val_fraction"] = interpolation(mark)
    edit_summary(run, change)


def plant_checkpoint_interpolation(run: Path, mark: Path) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["x"] = "oc"
    state["config"]["dataset"]["val_fraction"] = interpolation(mark)
    torch.save(state, run / "checkpoint.pt")


def plant_overrides_interpolation(run: Path, mark: Path) -> None:
    path = run / ".hydra" / "overrides.yaml"
    path.write_text(yaml.safe_dump([*yaml.safe_load(path.read_text()), "+x=oc",
                                    f"dataset.val_fraction='{interpolation(mark)}'"]))


def plant_model_interpolation(run: Path, mark: Path) -> None:
    saved = torch.load(run / "model.pt", weights_only=True)
    saved["config"]["dataset"]["val_fraction"] = interpolation(mark)
    torch.save(saved, run / "model.pt")
    edit_summary(run, lambda s: s.update(config={}))


@pytest.mark.parametrize("plant, command, named", [
    (plant_summary_interpolation, "eval", "summary.json: config.dataset.val_fraction"),
    (plant_summary_interpolation, "resume", "summary.json: config.dataset.val_fraction"),
    (plant_summary_interpolation, "functions", "skipped broken run dir"),
    (plant_checkpoint_interpolation, "resume", "checkpoint.pt: config: dataset.val_fraction"),
    (plant_overrides_interpolation, "resume", "overrides.yaml: 5 = \"dataset.val_fraction='${${x}.create:"),
    (plant_model_interpolation, "eval", "model.pt: config.dataset.val_fraction"),
], ids=["summary-eval", "summary-resume", "summary-functions", "checkpoint-resume", "overrides-resume", "model-eval"])
def test_an_interpolated_resolver_name_runs_nothing(run, tmp_path, outside, capsys, plant, command, named):
    mark = tmp_path / "PWNED"
    plant(run, mark)
    before, home = snapshot(run), hashes(outside)
    argv = {"eval": ["eval", str(run)], "resume": ["train", f"resume={run}", "max_steps=30"],
            "functions": ["functions", str(run.parent)]}[command]
    assert status(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and (command == "functions" or err.strip().count("\n") == 0), err
    assert named in err and "nothing in it is resolved" in err, err
    assert not mark.exists()
    assert snapshot(run) == before and hashes(outside) == home


def test_report_lists_an_interpolated_summary_as_broken(run, clean, tmp_path, outside, capsys):
    mark = tmp_path / "PWNED"
    plant_summary_interpolation(run, mark)
    err = report(sweep_of(run, tmp_path), clean, capsys)
    assert "holds '${'" in err and not mark.exists()


def test_a_hydra_config_with_interpolations_is_never_resolved(run, clean, tmp_path, capsys):
    """.hydra/config.yaml is Hydra's unresolved config: eval takes model.pt's config instead,
    report and the figures read it as text; its payload is never resolved."""
    mark = tmp_path / "PWNED"
    edit_summary(run, lambda s: s.update(config={}))
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["x"], config["reference"] = "oc", interpolation(mark)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    assert status(["eval", str(run)]) == 0
    sweep = sweep_of(run, tmp_path)
    shutil.copytree(clean, sweep / "0")
    assert status(["report", str(sweep), "--no-plots"]) == 0
    assert not mark.exists()


# --- writes through planted symlinks --------------------------------------------------------------------------

def test_a_refused_resume_never_truncates_a_symlinked_lock(run, outside, capsys):
    (run / ".gradbench.lock").unlink()
    (run / ".gradbench.lock").symlink_to(outside / ".bashrc")
    home = hashes(outside)
    assert status(["train", f"resume={run}", "max_steps=10"]) == 2  # past the budget: refused
    assert ".gradbench.lock" in one_line(capsys)
    assert hashes(outside) == home


def test_a_refused_resume_creates_no_missing_lock(run, capsys):
    (run / ".gradbench.lock").unlink()
    before = snapshot(run)
    assert status(["train", f"resume={run}", "max_steps=10"]) == 2
    assert "past max_steps=10" in one_line(capsys)
    assert not (run / ".gradbench.lock").exists() and snapshot(run) == before


def test_a_hard_linked_lock_is_refused(run, outside, capsys):
    (run / ".gradbench.lock").unlink()
    os.link(outside / "notes.txt", run / ".gradbench.lock")
    home = hashes(outside)
    assert status(["train", f"resume={run}", "max_steps=30"]) == 2
    assert "not a lock gradbench made" in one_line(capsys)
    assert hashes(outside) == home


def test_eval_predictions_replace_a_symlink_and_never_write_through_it(run, outside, capsys):
    (run / "predictions_test.csv").symlink_to(outside / ".bashrc")
    home = hashes(outside)
    assert status(["eval", str(run), "predictions=true"]) == 0
    assert hashes(outside) == home
    path = run / "predictions_test.csv"
    assert not path.is_symlink() and path.read_text().startswith("index,label,prediction")


def test_report_outputs_replace_symlinks_and_never_write_through_them(run, clean, tmp_path, outside, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copytree(clean, sweep / "0")
    for name in ("best.overrides", "table.csv", "table.md", "best.md", "confusion.png", "val_accuracy.png"):
        (sweep / name).symlink_to(outside / ".bashrc")
    home = hashes(outside)
    assert status(["report", str(sweep)]) == 0
    assert hashes(outside) == home
    assert not any(p.is_symlink() for p in sweep.iterdir() if p.is_file())


def test_a_resume_never_appends_to_a_symlinked_train_log(run, outside, capsys):
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(outside / "notes.txt")
    home = hashes(outside)
    assert status(["train", f"resume={run}", "max_steps=25"]) == 0
    assert hashes(outside) == home
    assert "train.log is a symbolic link" in capsys.readouterr().err


def test_a_symlinked_metrics_csv_refuses_the_resume(run, outside, capsys):
    (outside / "metrics.csv").write_bytes((run / "metrics.csv").read_bytes())
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").symlink_to(outside / "metrics.csv")
    home, before = hashes(outside), snapshot(run)
    assert status(["train", f"resume={run}", "max_steps=30"]) == 2
    assert "metrics.csv is unreadable (a symbolic link)" in one_line(capsys)
    assert hashes(outside) == home and snapshot(run) == before


def test_best_overrides_are_checked_and_quoted_for_a_shell(run, clean, tmp_path, capsys):
    """A stored override whose value is a command substitution: still one override after a
    shell reads the file, and nothing runs."""
    mark = tmp_path / "PWNED"
    path = clean / ".hydra" / "overrides.yaml"
    path.write_text(yaml.safe_dump([*yaml.safe_load(path.read_text()), f"+note='$(touch {mark})'"]))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copytree(clean, sweep / "0")
    assert status(["report", str(sweep), "--no-plots"]) == 0
    text = (sweep / "best.overrides").read_text()
    words = subprocess.run(["sh", "-c", 'eval "set -- $(tr "\\n" " " < "$1")"; printf "%s\\n" "$@"', "sh",
                            str(sweep / "best.overrides")], capture_output=True, text=True, check=True).stdout
    assert f"+note='$(touch {mark})'" in words.splitlines()
    assert [shlex.split(line)[0] for line in text.splitlines()] == words.splitlines()
    assert not mark.exists()


def test_best_overrides_leave_out_a_group_with_a_hydra_setting(run, clean, tmp_path, capsys):
    path = clean / ".hydra" / "overrides.yaml"
    path.write_text(yaml.safe_dump([*yaml.safe_load(path.read_text()), "hydra.job.chdir=true"]))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copytree(clean, sweep / "0")
    (sweep / "best.overrides").write_text("stale\n")
    assert status(["report", str(sweep), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "best.overrides not written" in err and "hydra.job.chdir is a Hydra setting" in err
    assert not (sweep / "best.overrides").exists() and (sweep / "table.md").exists()


def test_an_interpolation_typed_on_the_command_line_trains_evaluates_and_reports(tmp_path, monkeypatch, capsys):
    """The user's own `${...}` is resolved by Hydra when typed; what the run dir stores is
    resolved (summary, model.pt) or read as text (report's labels): all of it works, and
    only best.overrides, which Hydra would read, leaves that line out by refusing."""
    monkeypatch.chdir(tmp_path)
    assert status(["train", "max_steps=5", *FAST, "+width=8", "model.hidden=[${width}]", "hydra.run.dir=s/0"]) == 0
    assert status(["eval", "s/0"]) == 0
    assert status(["report", "s", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "broken" not in err and "best.overrides not written" in err and "holds '${'" in err


# --- deleting only what the command created -------------------------------------------------------------------

def test_a_refused_run_leaves_a_dir_that_was_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mylogs").mkdir()
    (tmp_path / "mylogs" / "a.log").write_text("x\n")
    assert status(["train", "hydra.run.dir=mylogs", "max_steps=-1"]) == 2
    assert "max_steps" in one_line(capsys)
    assert (tmp_path / "mylogs" / "a.log").read_text() == "x\n"


def test_a_refused_run_removes_the_dirs_it_made_and_no_parent(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert status(["train", "hydra.run.dir=made/by/it", "max_steps=-1"]) == 2
    one_line(capsys)
    assert not (tmp_path / "made").exists() and tmp_path.is_dir()


def test_a_resume_of_a_run_killed_before_its_checkpoint_deletes_nothing(run, tmp_path, capsys):
    for name in ("checkpoint.pt", "summary.json", "metrics.csv", "model.pt", ".gradbench.lock"):
        (run / name).unlink()
    for png in run.glob("*.png"):
        png.unlink()
    before = snapshot(run)
    assert status(["train", f"resume={run}", "max_steps=30"]) == 2
    assert "checkpoint.pt" in one_line(capsys)
    assert snapshot(run) == before and tmp_path.is_dir()


# --- hostile files: hangs, floods, deep nesting ----------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def deep(n: int) -> str:
    return "[" * n + "]" * n


PLANTS = {  # name → (plant(run), what the refusal names)
    "alias bomb in overrides.yaml": (lambda r: (r / ".hydra" / "overrides.yaml").write_text(BOMB), "anchor or alias"),
    "alias bomb in config.yaml": (lambda r: ((r / ".hydra" / "config.yaml").write_text(BOMB),  # read where the
                                             edit_summary(r, lambda s: s.update(config={}))),  # summary has none
                                  "anchor or alias"),
    "a tag in overrides.yaml": (lambda r: (r / ".hydra" / "overrides.yaml").write_text("- !!python/name:os.system x\n"),
                                "a tag"),
    "overrides.yaml holding 5": (lambda r: (r / ".hydra" / "overrides.yaml").write_text("5\n"), "not a list"),
    "summary.json nested 200 000 deep": (lambda r: (r / "summary.json").write_text(deep(200_000)), "nested deeper"),
    "summary.json nested 100 deep in a key": (
        lambda r: edit_summary(r, lambda s: s.update(extra=json.loads(deep(100)))), "nested deeper"),
    "summary.json → /dev/zero": (lambda r: ((r / "summary.json").unlink(), (r / "summary.json").symlink_to("/dev/zero")),
                                 "symbolic link"),
    "summary.json a FIFO": (lambda r: ((r / "summary.json").unlink(), os.mkfifo(r / "summary.json")), "not a regular file"),
    "metrics.csv a FIFO": (lambda r: ((r / "metrics.csv").unlink(), os.mkfifo(r / "metrics.csv")), "not a regular file"),
    "metrics.csv with 10⁶ columns": (lambda r: (r / "metrics.csv").write_text(",".join(["c"] * 10**6) + "\n"),
                                     "header is longer"),
    "metrics.csv with 5000 columns": (lambda r: (r / "metrics.csv").write_text(
        ",".join(f"c{i}" for i in range(5000)) + "\n" + ",".join(["1"] * 5000) + "\n"), "more than 1024 columns"),
    "metrics.csv one 1 MB line": (lambda r: (r / "metrics.csv").write_text("1" * 2**20), "header is longer"),
    "symlinked .hydra": (lambda r: (shutil.move(r / ".hydra", r / "h"), (r / ".hydra").symlink_to("h")),
                         "symbolic link"),
    "a bidi control in a summary key": (lambda r: edit_summary(r, lambda s: s.update(stop_reason=["\u202e"])),
                                        "stop_reason is a JSON list"),
}


@pytest.mark.parametrize("name", PLANTS)
def test_report_lists_a_hostile_run_as_broken_at_once(run, clean, tmp_path, outside, capsys, name):
    plant, named = PLANTS[name]
    home = hashes(outside)
    err = report(sweep_of(run, tmp_path, plant), clean, capsys)
    assert named in err, err
    assert hashes(outside) == home


EVAL_PLANTS = ["summary.json nested 200 000 deep", "summary.json → /dev/zero", "summary.json a FIFO"]


@pytest.mark.parametrize("name", EVAL_PLANTS)
def test_eval_refuses_a_hostile_summary_in_one_line(run, capsys, name):
    plant, named = PLANTS[name]
    plant(run)
    assert status(["eval", str(run)]) == 2
    assert named in one_line(capsys)


RESUME_PLANTS = ["alias bomb in overrides.yaml", "alias bomb in config.yaml", "overrides.yaml holding 5",
                 "summary.json nested 200 000 deep", "summary.json a FIFO", "metrics.csv a FIFO", "symlinked .hydra"]


@pytest.mark.parametrize("name", RESUME_PLANTS)
def test_a_resume_refuses_a_hostile_file_before_any_write(run, capsys, name):
    plant, named = PLANTS[name]
    plant(run)
    before = {p: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file() and not p.is_symlink()}
    assert status(["train", f"resume={run}", "max_steps=30"]) == 2
    assert named in one_line(capsys)
    assert {p: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file() and not p.is_symlink()} == before


def test_a_resume_with_a_corrupt_summary_refuses_before_training(run, capsys):
    (run / "summary.json").write_text('{"stop_reason": "max_steps", "steps": ')
    before = snapshot(run)
    assert status(["train", f"resume={run}", "max_steps=30"]) == 2
    assert "summary.json is not JSON" in one_line(capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("key, value, named", [
    ("dtype", "float16", "dtype must be one of"),
    ("eval_chunk", 0, "eval_chunk must be >= 1"),
    ("seed", [1], "seed must be an integer"),
    ("dataset", None, "config has no 'dataset'"),
])
def test_eval_validates_the_stored_config(run, capsys, key, value, named):
    def change(s):
        if value is None:
            del s["config"][key]
        else:
            s["config"][key] = value
    edit_summary(run, change)
    assert status(["eval", str(run)]) == 2
    assert named in one_line(capsys)


def test_an_infinite_learning_rate_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert status(["train", "optimizer.lr=inf", *FAST, "hydra.run.dir=r"]) == 2
    assert "optimizer.lr must be" in one_line(capsys)
    assert not (tmp_path / "r").exists()


# --- resume: one line-ending convention -----------------------------------------------------------------------

def without_times(path: Path) -> list[list[str]]:
    lines = path.read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    timed = {i for i, c in enumerate(header) if c.endswith("_time_s")}
    return [[c for i, c in enumerate(line.decode().split(",")) if i not in timed] for line in lines]


def test_a_resumed_metrics_csv_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Bytes equal but the time columns (wall clock), one LF per line, no CR anywhere."""
    monkeypatch.chdir(tmp_path)
    common = [*FAST, "device=cpu", "checkpoint_every=5"]
    assert status(["train", "max_steps=20", *common, "hydra.run.dir=whole"]) == 0
    assert status(["train", "max_steps=10", *common, "hydra.run.dir=parts"]) == 0
    assert status(["train", "resume=parts", "max_steps=20"]) == 0
    whole, parts = (tmp_path / "whole" / "metrics.csv").read_bytes(), (tmp_path / "parts" / "metrics.csv").read_bytes()
    assert b"\r" not in whole and b"\r" not in parts and whole.count(b"\n") == parts.count(b"\n") == 21
    assert without_times(tmp_path / "whole" / "metrics.csv") == without_times(tmp_path / "parts" / "metrics.csv")


def test_an_allocation_too_large_is_one_line(tmp_path, monkeypatch, capsys):
    """10¹² tangents of 867 parameters: 3.5 PB, more than any address space: torch's allocator
    refuses at once (no memory is touched), and the CLI says so in one line."""
    monkeypatch.chdir(tmp_path)
    assert status(["train", "estimator.num_tangents=1000000000000", "max_steps=2", *FAST, "hydra.run.dir=r"]) == 1
    assert "out of memory (tried to allocate" in one_line(capsys)


def test_hydra_failing_to_write_its_config_is_one_line(tmp_path, monkeypatch, capsys):
    """.hydra/ that cannot be written (here a file in its place; a full disk alike): one line, exit 1."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".hydra").write_text("a file\n")
    assert status(["train", "max_steps=2", *FAST, "hydra.run.dir=r"]) == 1
    assert "gradbench: error: writing" in one_line(capsys)
    assert (tmp_path / "r" / ".hydra").read_text() == "a file\n"


@pytest.mark.parametrize("planted", [".hydra/config.yaml", ".hydra"])
def test_training_into_a_dir_with_a_planted_hydra_link_is_refused_before_hydra_writes(tmp_path, monkeypatch, outside,
                                                                                       capsys, planted):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r" / ".hydra").mkdir(parents=True)
    if planted == ".hydra":
        (tmp_path / "r" / ".hydra").rmdir()
        (tmp_path / "r" / ".hydra").symlink_to(outside)
        (outside / "config.yaml").write_text("mine: 1\n")
    else:
        (tmp_path / "r" / planted).symlink_to(outside / ".bashrc")
    home = hashes(outside)
    assert status(["train", "max_steps=2", *FAST, "hydra.run.dir=r"]) == 2
    assert "is a symbolic link: Hydra would write through it" in one_line(capsys)
    assert hashes(outside) == home
