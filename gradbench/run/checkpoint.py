"""Checkpoints, and the comparison of a run dir's stored config with a job's.

    checkpoint.pt = {step, params, optimizer, scheduler, tangents, batches, result, config[, estimator]}

Everything a run needs to continue exactly where it stopped: parameters, optimizer and
scheduler state, the tangent and batch-order generators, the estimator's own state (FA / DFA's
fixed feedback matrices: `Estimator.state_dict`; optional, older checkpoints lack it), the step counters, times and last
evaluation, and the resolved config it was trained with. Written atomically (temp file and
rename), so a kill during the write leaves the previous checkpoint whole.
"""

from __future__ import annotations

from pathlib import Path

from gradbench.run import files
from gradbench.run.files import atomic_write

FILE = "checkpoint.pt"
# Keys that change no number a run produces: a finished run with other values of these is the
# same run (skip_done), and a checkpoint may be resumed with other values of them. Not
# eval_chunk: a forward pass's arithmetic depends on its batch shape (one row takes another
# BLAS path than 4096), so the evaluation metrics' last bits depend on the chunk.
NEUTRAL = ("resume", "skip_done", "threads", "log_every_s", "logger", "plot", "save_model",
           "checkpoint_every", "check", "bench", "sweep_metric", "search")
# Stop rules: a resumed run may be given a larger budget (continue a finished run further).
STOP_RULES = ("max_steps", "max_epochs", "stop_below")


def save(run_dir: Path, state: dict) -> None:
    import torch  # here, not at the top: `report` reads flatten and NEUTRAL without torch's seconds and 300 MB

    atomic_write(Path(run_dir) / FILE, lambda f: torch.save(state, f), binary=True)


KEYS = ("step", "params", "optimizer", "scheduler", "tangents", "batches", "result", "config")


def load(run_dir: Path, config_dir: str | None = None) -> dict | None:
    """The run dir's checkpoint, or None if it has none. Tensors and plain data only
    (weights_only), its config checked like any config read back (gradbench.run.targets); a file
    that is no such checkpoint is refused in one line naming it."""
    from gradbench.run import targets
    from gradbench.errors import OccupiedRunDir

    path = Path(run_dir) / FILE
    if not files.exists(path):
        return None
    try:
        state = files.load_torch(path)
    except OccupiedRunDir as e:
        raise OccupiedRunDir(f"{e}: the run cannot continue from it") from None
    missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else list(KEYS)
    if missing or not isinstance(state["config"], dict) or not isinstance(state["step"], int):
        raise OccupiedRunDir(f"{path} is not a gradbench checkpoint (missing or wrong: {', '.join(missing) or 'config, step'})")
    files.check_data(state["config"], f"{path}: config")  # plain data, no `${`: nothing in it is resolved
    targets.check(state["config"], str(path), config_dir, prefix="config.")
    return state


def flatten(config: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} → {'a.b': 1}; lists stay values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differences(stored: dict, current: dict, ignore: tuple[str, ...] = NEUTRAL) -> list[str]:
    """`key: stored → current` for every result-changing key that differs (top-level keys in
    `ignore`, and everything under them, left out)."""
    a, b = flatten(stored), flatten(current)
    keys = [k for k in {**a, **b} if k.split(".")[0] not in ignore]
    missing = object()
    return [f"{k}: {a.get(k, 'absent')!r} → {b.get(k, 'absent')!r}" for k in keys
            if a.get(k, missing) != b.get(k, missing)]
