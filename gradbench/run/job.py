"""Build a run from a composed config: validate it, pick the device, make the seeded streams,
instantiate the groups, and read back what a run dir already holds.

Every command that runs a model (train, check, bench, variance, eval) builds it here; the train
command's own flow (train, then write the run dir) is gradbench.commands.train.
"""

from __future__ import annotations

import hashlib
import os
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from gradbench.data import Data
from gradbench.errors import ConfigError, choose, require
from gradbench.models import Model, Objective, Params
from gradbench.run import checkpoint, files, targets, threads
from gradbench.run.validate import validate as check_config

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda, then mps, then cpu; an explicit device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto | cpu | cuda | cuda:N | mps, got {name!r}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    require(available.get(device.type, False), "device", "is not available on this machine", name)
    if device.type == "cuda" and device.index is not None:
        require(device.index < torch.cuda.device_count(), "device",
                f"index must be < {torch.cuda.device_count()}", name)
    return device


def set_deterministic(on: bool) -> None:
    """torch.use_deterministic_algorithms, called only to change the setting: the call imports
    torch._inductor, about 4 s of a 1 s penguins run on a 2-core machine."""
    if torch.are_deterministic_algorithms_enabled() != on:
        torch.use_deterministic_algorithms(on)


def stream(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """An independent generator per purpose (data, init, batches, tangents), all from `seed`."""
    digest = hashlib.sha256(f"gradbench/{seed}/{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little"))


def build(node: DictConfig, group: str, **runtime):
    """Instantiate a group's option; a ConfigError inside comes out as itself, any other error
    as a ConfigError naming the group and the cause (torch's own message, say)."""
    try:
        return instantiate(node, **runtime)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{group} ({node.get('_target_')}): {cause}") from None
        raise


def validate(cfg: DictConfig) -> None:
    """Check the run keys and the group options before any work (gradbench.run.validate)."""
    choose("dtype", cfg.dtype, DTYPES)
    check_config(cfg)


@dataclass
class Setup:
    """Everything a run needs, built from the config at the run's seed."""

    device: torch.device
    data: Data
    model: Model
    params: Params


def setup(cfg: DictConfig) -> Setup:
    """Data on the device, then the model and its initial parameters (seeded streams); the
    command has validated `cfg` first."""
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    data = build(cfg.dataset, "dataset", generator=stream(cfg.seed, "data")).to(device, dtype)
    n = len(data.train)
    require(cfg.batch_size is None or cfg.batch_size <= n, "batch_size",
            f"must be <= the training split size ({n}) or null for full batch", cfg.batch_size)
    model = build(cfg.model, "model", input_shape=data.input_shape, num_classes=data.num_classes)
    model.initialise(stream(cfg.seed, "init"))
    model.to(device=device, dtype=dtype)
    # Detached views share storage with the model: optimizer steps update its state_dict too.
    params = {name: p.detach() for name, p in model.named_parameters()}
    return Setup(device, data, model, params)


def step_flops(s: Setup, batch_size: int | None) -> int:
    """Forward FLOPs of one training batch (one example's, times the batch size)."""
    n = len(s.data.train)
    if n == 0:
        return 0
    one = s.data.train.take(slice(0, 1))
    return threads.forward_flops(lambda: Objective(s.model, one.x, one.y).loss(s.params)) * min(batch_size or n, n)


def stored_config(run_dir: Path) -> dict | None:
    """The resolved config of the run `run_dir` holds (its checkpoint's, else its summary's),
    or None if it holds no run yet; a config naming code to call is refused (gradbench.run.targets)."""
    state = checkpoint.load(run_dir, targets.job_config_dir())
    if state is not None:
        return state["config"]
    summary = read_summary(run_dir)
    if not summary or not isinstance(summary.get("config"), dict):
        return None
    targets.check(summary["config"], str(run_dir / "summary.json"), targets.job_config_dir(), prefix="config.")
    return summary["config"]


def read_summary(run_dir: Path) -> dict | None:
    """summary.json of `run_dir`, None if absent; a broken one is refused (BadRunFile, one line):
    the verdict on a run dir covers every file the command reads later."""
    path = run_dir / "summary.json"
    return files.read_summary(path) if files.exists(path) else None


def check_run_files(run_dir: Path) -> None:
    """Read every file of `run_dir` a train job reads later (summary.json, .hydra/'s files, for
    the figures' titles), so a broken or hostile one refuses the job before it writes anything."""
    read_summary(run_dir)
    if files.exists(run_dir / "metrics.csv"):  # read whole by a resume (rundir.check_metrics), after the setup
        os.close(files.open_regular(run_dir / "metrics.csv"))
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        if files.exists(path := run_dir / ".hydra" / name):
            files.read_yaml(path, opaque=True)  # titles only; resume reads overrides.yaml strictly (cli)


def finished_run(run_dir: Path) -> dict | None:
    """The summary of a finished run in `run_dir`, if it holds one: the summary says so (it
    is written last, atomically) AND every output it lists exists."""
    summary = read_summary(run_dir)
    if not summary or summary.get("stop_reason") in (None, "failed", "interrupted"):
        return None
    missing = [name for name in summary.get("outputs", []) if not (run_dir / name).is_file()]
    if missing:
        log.info("%s: the summary says finished but %s missing: training again", run_dir, ", ".join(missing))
        return None
    return summary
