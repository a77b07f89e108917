"""Run outputs: the per-step CSV (appended and flushed as the run goes) and summary.json."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

STEP_COLUMNS = ["step", "epoch", "batch_loss", "lr", "step_time_s", "train_time_s", "wall_time_s"]


def eval_columns(splits: list[str], metric_names: tuple[str, ...]) -> list[str]:
    return [f"{split}_{metric}" for split in splits for metric in metric_names]


class MetricsWriter:
    """Tidy CSV, one row per step: header once, empty cells where a value was not computed,
    flushed after every row so a crash or Ctrl-C keeps every finished step."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.columns = columns
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


def write_json(path: Path, data: dict) -> None:
    """JSON with non-finite floats as null (strict JSON readers reject NaN)."""
    path.write_text(json.dumps(_finite(data), indent=2) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
