"""Run outputs: the per-step CSV (appended and flushed as the run goes), summary.json, and
atomic writes (a kill mid-write leaves the old file or the new one, never half of one)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported by the readers only: a training run never needs it
    from collections.abc import Callable
    import pandas as pd

from gradbench.errors import WriteFailed
from gradbench.run import files
from gradbench.run.files import atomic_write  # noqa: F401  (re-exported: one writer)


class MetricsWriter:
    """Tidy CSV, one row per step: header once, empty cells where a value was not computed,
    flushed after every row so a crash or Ctrl-C keeps every finished step.

    `resume_after=k` continues a run from its checkpoint at step k: the rows after k (steps
    that will be trained again) and a row cut mid-line are dropped first, so no step is
    counted twice."""

    def __init__(self, path: Path, columns: list[str], resume_after: int | None = None) -> None:
        self.columns, self.path = columns, path
        self._file = None
        try:
            self._open(resume_after)
        except OSError as e:
            self.close()
            raise WriteFailed(path, e) from None

    def _open(self, resume_after: int | None) -> None:
        """The header (and, on resume, the rows kept) written atomically: a symlink planted at
        metrics.csv is replaced, never written through; then appended to, one LF per row."""
        path, columns = self.path, self.columns
        kept = []
        if resume_after is not None:
            lines = bytes(files.whole_lines(files.read_bytes(path))).decode().splitlines(keepends=True)[1:]
            kept = [line for line in lines if int(line.split(",", 1)[0]) <= resume_after]
        files.atomic_write(path, lambda f: f.write("".join([",".join(columns) + "\n", *kept])))
        self._file = files.open_append(path)
        # one line-ending convention (LF), as the header: a resumed file equals an uninterrupted one
        self._writer = csv.DictWriter(self._file, fieldnames=columns, restval="", lineterminator="\n")

    def write(self, row: dict) -> None:
        """Append one row; a full disk raises WriteFailed (the rows before stay, this one may be
        cut mid-line: whole_lines and resume drop it)."""
        try:
            self._writer.writerow({k: _cell(v) for k, v in row.items()})
            self._file.flush()
        except OSError as e:
            raise WriteFailed(self.path, e) from None

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except OSError:  # only after a failed write, already raised: the row it held is lost
            pass

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cell(value):
    return repr(value) if isinstance(value, float) else value  # repr: shortest exact float


def read_metrics(path: Path, columns: Callable[[str], bool] | set[str] | None = None) -> pd.DataFrame:
    """metrics.csv as a frame (only the columns it has of `columns`, a set or a test of a
    name, where given), without a last row cut mid-line (a run killed while writing); empty if
    there is none (gradbench.run.files)."""
    import pandas as pd

    if not files.exists(path):
        return pd.DataFrame()
    return files.read_csv(path, usecols=None if columns is None else columns if callable(columns) else columns.__contains__)


def with_initial(frame: pd.DataFrame, initial: dict | None) -> pd.DataFrame:
    """The CSV with the initial evaluation as step 0 at train time 0 (summary.json's `initial`)."""
    import pandas as pd

    row = {f"{split}_{name}": math.nan if value is None else value  # null: a non-finite value (write_json)
           for split, metrics in (initial or {}).items() for name, value in metrics.items()}
    if not row:
        return frame
    return pd.concat([pd.DataFrame([{"step": 0, "train_time_s": 0.0, **row}]), frame], ignore_index=True)


def remove_stale(folder: Path) -> list[Path]:
    """Remove atomic_write's temporary files in `folder` that no live process is writing (a
    run killed mid-write): `.<name>.<pid>.tmp` whose pid is gone, or is this process's."""
    removed = []
    for tmp in Path(folder).glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
