"""Sweeps that end with a verdict: each job records its outcome, and the sweep closes with a
one-line tally and a non-zero exit status if any job failed; parallel workers die with it.

A job writes `<sweep dir>/.gradbench/outcomes/<job number>` (finished, diverged, failed,
skipped or interrupted); the Hydra callback `Tally` clears that folder when the sweep starts
and counts it when the sweep ends, so the count covers this launch only, whichever launcher
ran the jobs (in this process, in joblib workers, on SLURM).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gradbench.errors import WriteFailed

log = logging.getLogger(__name__)
OUTCOMES = ("finished", "diverged", "failed", "interrupted", "skipped")
BARS: dict = {}  # sweep dir → its progress bar (gradbench.run.progress.SweepBar), in the sweep's process
CREATED: dict = {}  # run or sweep dir → the folders above it this command created (OutputDir), innermost first
RESULT: dict = {}  # the last sweep's tally in this process, for the CLI's exit status


def _folder(sweep_dir) -> Path:
    return Path(sweep_dir) / ".gradbench" / "outcomes"


def outcome(path: Path) -> str:
    """A job's recorded outcome, read as data (gradbench.run.files: a regular file, a few bytes);
    an unreadable record counts as "failed"."""
    from gradbench.run.files import read_text

    try:
        return read_text(path, cap=64)
    except ValueError:
        return "failed"


def record(run_dir: Path, outcome: str) -> None:
    """Record a sweep job's outcome (a single run records nothing)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return
    path = _folder(hydra.sweep.dir) / str(hydra.job.num)
    try:
        from gradbench.run.files import write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, outcome)  # a symlink planted at the job's name is replaced, not written through
    except (OSError, WriteFailed) as e:  # a full disk: no half-written outcome, and the sweep goes on
        path.unlink(missing_ok=True)
        log.error("the sweep's tally will miss job %s (%s): writing %s failed: %s", hydra.job.num, outcome,
                  path, str(e) if isinstance(e, WriteFailed) else (e.strerror or str(e)).lower())


PARENT = "GRADBENCH_SWEEP_PID"  # set by the sweep's own process; its workers inherit it
WORKER = "GRADBENCH_SWEEP_WORKER"  # set in a parallel sweep's worker at its start (start_worker)


def in_worker() -> bool:
    """True in a process that runs sweep jobs for its parent, the sweep: a joblib worker (marked
    at its start, so it stays one once its parent is gone) or a child of another launcher."""
    return WORKER in os.environ or os.environ.get(PARENT) == str(os.getppid())


def die_with_parent() -> None:
    """In a worker, ask Linux to send SIGTERM when the parent dies (even by SIGKILL), so a
    killed sweep leaves no orphan training on; the signal then stops the run cleanly. The
    parent is checked after the request, so one that died before it is seen too: the worker
    exits at once, training nothing (a job queued before the parent died is not started)."""
    if not in_worker():
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.environ.get(PARENT) != str(os.getppid()):
        print("gradbench: the sweep's process is gone: its worker exits", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)


def start_worker(cwd: str | None = None) -> None:
    """A parallel sweep's worker, first thing: a worker for good, and bound to die with the
    sweep before it waits for its first job, not only once it trains one; in the sweep's
    working directory, where its relative run dirs belong."""
    os.environ[WORKER] = "1"
    if cwd is not None:
        os.chdir(cwd)
    die_with_parent()


def _start_workers_bound() -> None:
    """Make joblib's loky workers run start_worker first. Binding them at a job's start only
    left two holes: a worker spawned as the parent died never bound itself, and a worker whose
    job ended on the parent's death (no longer in_worker by its parent pid, so sys.exit and not
    os._exit) took the next queued job and trained it. Hydra's joblib launcher hard-codes the
    backend name "loky", and Hydra takes launchers from hydra_plugins only: so "loky" is
    re-registered here, in the sweep's process, as loky with this initializer."""
    from joblib import register_parallel_backend
    from joblib._parallel_backends import LokyBackend

    class BoundLoky(LokyBackend):
        def configure(self, *args, **kwargs):
            # the cwd as an argument: loky reuses its workers only for equal arguments, so a
            # sweep started elsewhere (a second sweep in one process) gets workers of its own
            return super().configure(*args, initializer=start_worker, initargs=(os.getcwd(),), **kwargs)

    register_parallel_backend("loky", BoundLoky)


@contextlib.contextmanager
def guard_sweep():
    """While a sweep runs in this process: SIGINT or SIGTERM becomes one SIGTERM to each worker
    (each finishes its step and writes its outputs), a wait for them, and exit 128 + signal; a
    second signal kills the workers at once. Jobs run in this process (the basic launcher)
    handle the signal themselves while they train. Environment and handlers are restored."""
    os.environ[PARENT] = str(os.getpid())
    stopping: list[int] = []

    def handle(signum, frame) -> None:
        workers = _children()
        if stopping:
            for pid in workers:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            os._exit(128 + stopping[0])
        stopping.append(signum)
        print(f"gradbench: {signal.Signals(signum).name}: stopping the sweep's {len(workers)} worker process(es) "
              f"cleanly (again to kill them at once)", file=sys.stderr)
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 300
        while workers and time.monotonic() < deadline:
            workers = [pid for pid in workers if _running(pid)]
            time.sleep(0.05)
        os._exit(128 + signum)

    saved = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        os.environ.pop(PARENT, None)
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _children() -> list[int]:
    """The worker PIDs whose parent is this process (Linux /proc; elsewhere none), without the
    multiprocessing resource trackers, which exit by themselves once this process is gone."""
    me, found = str(os.getpid()), []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if (entry.read_text().rsplit(")", 1)[1].split()[1] == me
                    and b"resource_tracker" not in (entry.parent / "cmdline").read_bytes()):
                found.append(int(entry.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


class Tally(Callback):
    """Counts the outcomes of a sweep's jobs and logs the one-line verdict; on a terminal, a
    bar follows the count as the jobs end (gradbench.run.progress.SweepBar)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from gradbench.run.progress import SweepBar, sweep_size

        shutil.rmtree(_folder(config.hydra.sweep.dir), ignore_errors=True)
        # kept outside the callback: the launcher pickles callbacks for its workers (a thread does not pickle)
        BARS[str(config.hydra.sweep.dir)] = bar = SweepBar(_folder(config.hydra.sweep.dir), sweep_size(config))
        bar.start()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if (bar := BARS.pop(str(config.hydra.sweep.dir), None)) is not None:
            bar.stop()
        folder = _folder(config.hydra.sweep.dir)
        # job numbers only: a temporary file of a worker killed mid-write is no outcome
        counts = Counter(outcome(p) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else Counter()
        RESULT.update(counts=counts, dir=config.hydra.sweep.dir)
        line = ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o] or o != "interrupted")
        log.info("sweep done: %s → %s (gradbench report %s)", line, config.hydra.sweep.dir,
                 config.hydra.sweep.dir)


class OutputDir(Callback):
    """Creates the run (or sweep) dir before Hydra does, so a dir that cannot be created (no
    permission, a name too long, a full disk) ends the command with one line, exit status 2;
    a sweep's launcher that cannot run here (SLURM's without SLURM) too, before the dir."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _make(config.hydra.run.dir)
        _refuse_planted(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check_launcher(config)
        _make(config.hydra.sweep.dir)
        sweep = Path(config.hydra.sweep.dir)
        for job in [sweep, *(p for p in sweep.iterdir() if p.is_dir() and not p.is_symlink())]:
            _refuse_planted(job)
        if str(config.hydra.launcher.get("_target_", "")).endswith(".JoblibLauncher"):
            _start_workers_bound()


def _check_launcher(config: DictConfig) -> None:
    """The SLURM launcher submits with `srun`/`sbatch`: without them, one line before any dir."""
    if str(config.hydra.launcher.get("_target_", "")).endswith(".SlurmLauncher") and shutil.which("srun") is None:
        print("gradbench: error: hydra/launcher=slurm needs SLURM (srun is not on PATH): run the sweep on the "
              "cluster, or pick hydra/launcher=parallel (this machine) or submitit_local", file=sys.stderr)
        sys.exit(2)


def _refuse_planted(run_dir: Path) -> None:
    """Hydra writes .hydra/*.yaml with a plain open() before any job code runs: a symlink planted
    there (a downloaded run dir trained into again) would be written through. Refused in one
    line, exit 2, before Hydra writes; so is a symlinked sweep tally folder."""
    planted = [p for p in (run_dir / ".hydra", *(run_dir / ".hydra" / f"{n}.yaml" for n in ("config", "hydra", "overrides")),
                           run_dir / ".gradbench", run_dir / ".gradbench" / "outcomes") if p.is_symlink()]
    if planted:
        print(f"gradbench: error: {planted[0]} is a symbolic link: Hydra would write through it; remove it, or use "
              f"another run dir", file=sys.stderr)
        sys.exit(2)


def _make(path: str) -> None:
    """Create `path` (and its missing parents), remembering in CREATED whether this command
    made it: a command that refuses removes only what it made (gradbench.cli.discard_if_empty)."""
    target = Path(path).absolute()
    missing = [p for p in (target, *target.parents) if not os.path.lexists(p)]
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        if missing and missing[0] == target:
            CREATED[str(target)] = missing[1:]
    except OSError as e:
        print(f"gradbench: error: hydra.run.dir / hydra.sweep.dir cannot be created ({e.strerror}): {path}",
              file=sys.stderr)
        sys.exit(2)
