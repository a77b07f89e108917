"""Shared test helpers: run the real CLI (in-process, or as a subprocess) inside tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from gradbench.cli import main

GRADBENCH = str(Path(sys.executable).parent / "gradbench")
FAST = ["eval_every=5", "plot=false", "log_every_s=1000"]  # keep unit-level runs lean

# The test problems are tiny: a second intra-op thread only adds synchronisation (10-50x
# slower steps when the 2 cores are shared). Subprocesses get the same through the env.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


# ---------------------------------------------------------------- processes: none left behind
# Every process a test starts inherits this mark in its environment (a new one per pytest
# session, so a pytest started by a test marks its own children apart). A process whose parent
# died is re-parented to init and its parent chain no longer leads here; the mark still does.
MARK = "GRADBENCH_TEST_SESSION"
os.environ[MARK] = uuid.uuid4().hex
# How long processes that a test stopped may take to be gone (a SIGKILLed one: milliseconds; a
# SIGTERMed sweep writes its outputs first): polled, so an idle machine waits for nothing.
GRACE_S = float(os.environ.get("GRADBENCH_TEST_GRACE_S", 30))  # tests/test_hygiene.py shortens it


def _live(pid_dir: Path) -> tuple[int, bytes] | None:
    """(parent pid, environment) of a live process, None for a zombie or one that is gone."""
    try:
        stat = (pid_dir / "stat").read_text()
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state in ("Z", "X"):
            return None
        return int(ppid), (pid_dir / "environ").read_bytes()
    except (OSError, ValueError):
        return None


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200].strip()
    except OSError:
        return "?"


def processes_with(marker: str) -> dict[int, str]:
    """pid → command line of every live process whose environment holds `marker`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (live := _live(proc)) and marker.encode() in live[1]:
            found[int(proc.name)] = command_line(int(proc.name))
    return found


def descendants() -> dict[int, str]:
    """pid → command line of every live process this pytest process started, directly or not:
    its descendants by parent pid, and every process carrying this session's mark."""
    me, mark = os.getpid(), f"{MARK}={os.environ[MARK]}".encode()
    parents, marked = {}, set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (live := _live(proc)):
            parents[int(proc.name)] = live[0]
            if mark in live[1]:
                marked.add(int(proc.name))

    def below_me(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return {pid: command_line(pid) for pid in parents if pid != me and (pid in marked or below_me(pid))}


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until_gone(find, timeout: float = GRACE_S) -> dict[int, str]:
    """Poll `find()` (pid → command line) until it is empty or `timeout` passes; what is left."""
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Processes:
    """Starts a test's processes, each in a session (process group) of its own, and kills every
    group when the test ends, whatever its outcome (the `processes` fixture)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the process and whatever it started
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def processes():
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


def stop_worker_pool() -> None:
    """Shut down joblib's reusable loky executor, where a test in this process started one."""
    executor = sys.modules.get("joblib.externals.loky.reusable_executor")
    if executor is not None and getattr(executor, "_executor", None) is not None:
        executor._executor.shutdown(wait=True, kill_workers=True)
        executor._executor = None


@pytest.fixture(autouse=True)
def no_process_left_behind(request):
    """Fails a test that leaves a process running (after a polled grace period), and kills it,
    so that one test's leftover neither loads the machine nor is blamed on the next test. A
    parallel sweep run in-process leaves joblib's reusable worker pool: the test's own cleanup
    shuts it down first; the interpreter's resource trackers (one per process, gone with pytest)
    are not a test's."""
    yield
    stop_worker_pool()
    left = wait_until_gone(lambda: {pid: cmd for pid, cmd in descendants().items() if "resource_tracker" not in cmd})
    if left:
        kill_all(left)
        pytest.fail(f"{request.node.nodeid} left {len(left)} process(es) running: "
                    + "; ".join(f"{pid}: {cmd}" for pid, cmd in sorted(left.items())), pytrace=False)


def shared_mnist() -> Path | None:
    """The folder holding real MNIST's raw files, where this machine has one: $GRADBENCH_DATA's
    MNIST/raw, else the nearest shared/data/MNIST/raw beside the clone or a folder above it
    (the development machines and CI keep it in ../shared/data; a user's fresh clone has none)."""
    if os.environ.get("GRADBENCH_DATA"):
        candidate = Path(os.environ["GRADBENCH_DATA"]).expanduser() / "MNIST" / "raw"
        if candidate.is_dir():
            return candidate
    for folder in Path(__file__).resolve().parents[1].parents:
        candidate = folder / "shared" / "data" / "MNIST" / "raw"
        if candidate.is_dir():
            return candidate
    return None


def mnist_root(folder: Path) -> Path | None:
    """A data root in `folder` whose MNIST/raw links to the shared raw files (so split caches
    are written in `folder`, never in the shared one), or None where there is no real MNIST."""
    raw = shared_mnist()
    if raw is None:
        return None
    (folder / "MNIST").mkdir(parents=True, exist_ok=True)
    if not (folder / "MNIST" / "raw").exists():
        (folder / "MNIST" / "raw").symlink_to(raw)
    return folder


def run_dirs(root: Path) -> list[Path]:
    """Every run dir (a folder with .hydra/) under root/outputs, oldest first."""
    return sorted(p.parent for p in (root / "outputs").rglob(".hydra"))


class Runner:
    """`runner("train", "model=logreg", ...)` runs gradbench in-process with cwd = tmp_path
    and returns the run dirs it created; `runner.subprocess(...)` runs the installed script."""

    def __init__(self, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cwd = cwd
        monkeypatch.chdir(cwd)

    def __call__(self, *args: str) -> list[Path]:
        before = set(run_dirs(self.cwd))
        argv = sys.argv
        try:
            main(list(args))
        finally:
            sys.argv = argv
        return [p for p in run_dirs(self.cwd) if p not in before]

    def subprocess(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        result = subprocess.run([GRADBENCH, *args], cwd=self.cwd, capture_output=True, text=True,
                                env=full_env, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"gradbench {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runner:
    return Runner(tmp_path, monkeypatch)


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """(metrics.csv as a frame, summary.json as a dict) of one run dir."""
    return pd.read_csv(run_dir / "metrics.csv"), json.loads((run_dir / "summary.json").read_text())
