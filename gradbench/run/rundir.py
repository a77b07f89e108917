"""What a train job may do with a run dir that already holds a run: a failed command never
damages a finished run.

- One writer at a time: the job holds an OS file lock on RUN_DIR/.gradbench.lock while it
  writes (fcntl.flock: the kernel releases it when the process dies, even by kill -9); a second
  writer is refused with the holder's PID.
- A resume that cannot go on is refused before anything is written (OccupiedRunDir, one line
  naming the broken file): a diverged run, a checkpoint past the new budget, a finished run the
  stop rules leave nothing to train, a checkpoint or metrics.csv that does not fit the run.
- A resumed run that fails before its next checkpoint leaves the run dir as it found it.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from pathlib import Path

from gradbench.errors import OccupiedRunDir
from gradbench.run import files

LOCK = ".gradbench.lock"  # holds the writer's PID while locked, empty otherwise


@contextlib.contextmanager
def lock(run_dir: Path):
    """Hold the run dir's write lock for the block, or refuse naming the process that holds it.
    The lock file is opened with O_NOFOLLOW and must be this dir's own plain file
    (gradbench.run.files.open_lock); one this command created is removed again if the command
    fails or refuses (a refused command leaves the dir as it found it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, created = files.open_lock(run_dir / LOCK)
    done = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise OccupiedRunDir(f"{run_dir} is being written by another gradbench process (PID {holder}): "
                                 f"wait for it to finish, or stop it first") from None
        found = os.fstat(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
            done = True
        finally:
            # empty again, with its times: a command that refused leaves every file as it was
            os.ftruncate(fd, 0)
            os.utime(fd, ns=(found.st_atime_ns, found.st_mtime_ns))
            if created and not done:
                with contextlib.suppress(OSError):
                    os.unlink(run_dir / LOCK)  # made by this command, which wrote nothing
    finally:
        os.close(fd)  # closing releases the lock


def verdict(state: dict | None, summary: dict | None, stop) -> tuple[str, str]:
    """(kind, why) for a stored run under the stop rules `stop` (gradbench.run.train.StopRule):
    "go" (train on, or write a killed run's outputs), "done" (finished, and the rules leave
    nothing to train), "diverged" (nothing to continue), "past" (the checkpoint is beyond the
    budget: continuing would rewrite a longer run as a shorter one)."""
    steps = state["step"] if state else (summary or {}).get("steps", 0)
    if (summary or {}).get("stop_reason") == "diverged" or (state and not _finite(state)):
        return "diverged", f"diverged at step {steps}: nothing to continue"
    epochs = (summary or {}).get("epochs")
    per_epoch = round(steps / epochs) if isinstance(epochs, (int, float)) and epochs > 0 else None
    budget = [(stop.max_steps, "max_steps", 1)]
    if per_epoch:
        budget.append((stop.max_epochs, "max_epochs", per_epoch))
    for limit, key, unit in budget:
        if limit is not None and steps > limit * unit:
            return "past", (f"the run is at step {steps}, past {key}={limit}: a shorter budget would rewrite it "
                            f"as another run (give {key} >= {math.ceil(steps / unit)})")
    if summary is None:
        return "go", ""
    reached = next((f"{key}={limit}" for limit, key, unit in budget if limit is not None and steps >= limit * unit), "")
    loss = ((summary.get("final") or {}).get("train") or {}).get("loss")
    if not reached and stop.stop_below is not None and summary.get("stop_reason") == "threshold" \
            and isinstance(loss, (int, float)) and loss < stop.stop_below:
        reached = f"stop_below={stop.stop_below}"
    if reached:
        return "done", (f"finished at step {steps} ({summary.get('stop_reason')}): {reached} leaves nothing to "
                        f"train (a larger budget continues it)")
    return "go", ""


def _finite(state: dict) -> bool:
    import torch

    params = state.get("params") or {}
    return all(torch.isfinite(p).all() for p in params.values() if isinstance(p, torch.Tensor))


def check_state(path: Path, state: dict, params: dict, optimizer, scheduler, estimator, result_type) -> None:
    """Refuse a checkpoint that does not fit the run being continued (other parameter names or
    shapes, optimizer or scheduler state that does not load), before anything is written."""
    import torch

    stored = state.get("params")
    if not isinstance(stored, dict) or set(stored) != set(params) or any(
            not isinstance(stored[k], torch.Tensor) or stored[k].shape != p.shape for k, p in params.items()):
        raise OccupiedRunDir(f"{path}: its parameters do not fit this run's model: the run cannot continue from it")
    try:  # the same states train() restores: loading them twice changes nothing
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["tangents"] is not None and estimator.generator is not None:
            estimator.generator.set_state(state["tangents"])
        estimator.load_state_dict(state.get("estimator") or {})
        result_type(**state["result"])
    except Exception as e:
        raise OccupiedRunDir(f"{path}: its optimizer, scheduler or counters do not load "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def check_metrics(path: Path, columns: list[str], step: int) -> bytes:
    """metrics.csv's bytes, after making sure a resume at `step` can continue it: the same
    header, then whole numeric rows for steps 1..step (rows after them are dropped on resume)."""
    try:
        text = files.read_bytes(path)
        lines = text.decode().splitlines(keepends=True)[: text.count(b"\n")]
    except UnicodeDecodeError as e:
        raise OccupiedRunDir(f"{path} is unreadable ({e}): the run cannot continue") from None
    if not lines or lines[0].rstrip("\r\n") != ",".join(columns):
        raise OccupiedRunDir(f"{path}: its header is not this run's columns: the run cannot continue")
    for number, line in enumerate(lines[1:], start=1):
        cells = line.rstrip("\r\n").split(",")
        if number <= step and (len(cells) != len(columns) or cells[0] != str(number)
                               or not all(_number(c) for c in cells)):
            raise OccupiedRunDir(f"{path}: line {number + 1} is not step {number}'s row: the run cannot continue")
        if number > step and not cells[0].isdigit():
            raise OccupiedRunDir(f"{path}: line {number + 1} is not a row: the run cannot continue")
    if len(lines) - 1 < step:
        raise OccupiedRunDir(f"{path} holds {len(lines) - 1} rows, the checkpoint {step}: the run cannot continue")
    return text


def _number(cell: str) -> bool:
    try:
        float(cell or "0")  # an empty cell: a value not computed on that step
    except ValueError:
        return False
    return True


def roll_back(run_dir: Path, step: int, metrics: bytes) -> bool:
    """After a resumed run failed: if no checkpoint past `step` was written, put metrics.csv
    back as it was (True), so the run dir is the one the command found; else False (the run
    moved on, and its outputs say it failed)."""
    from gradbench.run import checkpoint
    from gradbench.run.files import atomic_write

    try:
        moved_on = (checkpoint.load(run_dir) or {}).get("step", step) != step
    except OccupiedRunDir:
        moved_on = True
    if moved_on:
        return False
    atomic_write(run_dir / "metrics.csv", lambda f: f.write(metrics), binary=True)
    return True
