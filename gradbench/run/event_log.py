"""`logger=tensorboard`: TensorBoard event files beside metrics.csv, the same scalars, row by row.

    pip install gradbench[tensorboard]
    gradbench train logger=tensorboard          then: tensorboard --logdir outputs/

metrics.csv stays the run's record (reports and plots read it); the event files are a view of
it for TensorBoard, one run per run dir, so `--logdir outputs/` shows every run and sweep job.
torch's SummaryWriter is imported only when asked for: it pulls in tensorboard.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from gradbench.errors import ConfigError

LOGGERS = ("csv", "tensorboard", "mlflow")  # csv: metrics.csv alone; tensorboard: also event files; mlflow: an MLflow run (run/tracker.py)


class EventLog:
    """Writes each metrics.csv row to `writer` (the CSV) and its numbers to TensorBoard."""

    def __init__(self, writer, run_dir: Path, resume_after: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logger=tensorboard needs tensorboard: pip install gradbench[tensorboard]") from None
        self.writer = writer
        # purge_step: a resumed run drops the events after its checkpoint, as metrics.csv drops its rows
        self.events = SummaryWriter(str(run_dir), purge_step=None if resume_after is None else resume_after + 1)

    def write(self, row: dict) -> None:
        self.writer.write(row)
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.events.add_scalar(name, value, global_step=row["step"])

    def close(self) -> None:
        self.events.close()


@contextlib.contextmanager
def open_log(logger: str, writer, run_dir: Path, resume_after: int | None = None):
    """`writer` itself for logger=csv; an EventLog around it for logger=tensorboard."""
    if logger != "tensorboard":
        yield writer
        return
    log = EventLog(writer, run_dir, resume_after)
    try:
        yield log
    finally:
        log.close()
