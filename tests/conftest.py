"""Shared test helpers: run the real CLI (in-process, or as a subprocess) inside tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
