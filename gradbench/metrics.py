"""Run outputs: the per-step CSV (appended and flushed as the run goes), summary.json, and
atomic writes (a kill mid-write leaves the old file or the new one, never half of one)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Callable

import pandas as pd

class MetricsWriter:
    """Tidy CSV, one row per step: header once, empty cells where a value was not computed,
    flushed after every row so a crash or Ctrl-C keeps every finished step.

    `resume_after=k` continues a run from its checkpoint at step k: the rows after k (steps
    that will be trained again) and a row cut mid-line are dropped first, so no step is
    counted twice."""

    def __init__(self, path: Path, columns: list[str], resume_after: int | None = None) -> None:
        self.columns = columns
        if resume_after is not None:
            kept = [line for line in whole_lines(path)[1:] if int(line.split(",", 1)[0]) <= resume_after]
            atomic_write(path, lambda f: f.write("".join([",".join(columns) + "\n", *kept])))
            self._file = open(path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=columns, restval="")
            return
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, restval="")
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cell(value):
    return repr(value) if isinstance(value, float) else value  # repr: shortest exact float


def whole_lines(path: Path) -> list[str]:
    """The file's lines that end in a newline: a line cut short by a kill is left out."""
    text = Path(path).read_text()
    return text.splitlines(keepends=True)[: text.count("\n")]


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv as a frame, without a last row cut mid-line (a run killed while writing)."""
    lines = whole_lines(path) if Path(path).exists() else []
    return pd.read_csv(io.StringIO("".join(lines))) if lines else pd.DataFrame()


def with_initial(frame: pd.DataFrame, initial: dict | None) -> pd.DataFrame:
    """The CSV with the initial evaluation as step 0 at train time 0 (summary.json's `initial`)."""
    row = {f"{split}_{name}": math.nan if value is None else value  # null: a non-finite value (write_json)
           for split, metrics in (initial or {}).items() for name, value in metrics.items()}
    if not row:
        return frame
    return pd.concat([pd.DataFrame([{"step": 0, "train_time_s": 0.0, **row}]), frame], ignore_index=True)


def atomic_write(path: Path, write: Callable, binary: bool = False) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb" if binary else "w") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    """JSON with non-finite floats as null (strict JSON readers reject NaN), written atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(_finite(data), indent=2) + "\n"))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
