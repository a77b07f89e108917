"""Run outputs: the per-step CSV (appended and flushed as the run goes), summary.json, and
atomic writes (a kill mid-write leaves the old file or the new one, never half of one)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pandas is imported by the readers only: a training run never needs it
    import pandas as pd

from gradbench.errors import WriteFailed


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
        path, columns = self.path, self.columns
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


def whole_lines(path: Path) -> list[str]:
    """The file's lines that end in a newline: a line cut short by a kill is left out."""
    text = Path(path).read_text()
    return text.splitlines(keepends=True)[: text.count("\n")]


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv as a frame, without a last row cut mid-line (a run killed while writing)."""
    import pandas as pd

    lines = whole_lines(path) if Path(path).exists() else []
    return pd.read_csv(io.StringIO("".join(lines))) if lines else pd.DataFrame()


def with_initial(frame: pd.DataFrame, initial: dict | None) -> pd.DataFrame:
    """The CSV with the initial evaluation as step 0 at train time 0 (summary.json's `initial`)."""
    import pandas as pd

    row = {f"{split}_{name}": math.nan if value is None else value  # null: a non-finite value (write_json)
           for split, metrics in (initial or {}).items() for name, value in metrics.items()}
    if not row:
        return frame
    return pd.concat([pd.DataFrame([{"step": 0, "train_time_s": 0.0, **row}]), frame], ignore_index=True)


def atomic_write(path: Path, write: Callable, binary: bool = False) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it over `path`. A write
    that fails (a full disk) removes the temporary file, leaves `path` as it was and raises
    WriteFailed; a kill mid-write leaves the temporary file (remove_stale)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and (cause := os_error(e)):
            raise WriteFailed(path, cause) from None
        raise


def os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or the one torch.save turns into a RuntimeError."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


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
