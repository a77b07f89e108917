"""`logger=mlflow`: each run dir an MLflow run, each sweep a parent run its jobs nest under.

    pip install gradbench[mlflow]
    gradbench train logger=mlflow                  then: mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db
    gradbench train logger=mlflow logger.tracking_uri=http://127.0.0.1:5000    (a server)

An MLflow run holds the run's overrides as params, every metrics.csv column as step metrics
(sent in batches while it trains), summary.json's figures as metrics (final_<split>_<metric>,
run_steps, run_train_time_s, ...), its stop reason, choices and run dir as tags, and its figures,
summary.json and metrics.csv as artifacts. metrics.csv stays the run's record: the tracker is a
view of it, and a tracker that fails mid-run (a server gone) costs a warning, never the run.
The store is checked before training starts: an unreachable server is one line, exit 2.

Sweeps: the sweep's own process (the Hydra callback SweepRun) opens one parent run per sweep
dir before the first job; each job finds it by its tag and nests under it (MLflow's
mlflow.parentRunId), on any launcher. A parent run and not an experiment per sweep: the runs
of many sweeps stay side by side in one experiment's table, where MLflow compares them.
mlflow is imported only when asked for (it takes seconds).
"""

from __future__ import annotations

import logging
import math
import time
import urllib.error
import urllib.request
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gradbench.errors import ConfigError
from gradbench.run import files
from gradbench.run.sweep import outcome as sweep_outcome

log = logging.getLogger(__name__)
LOCAL_STORE = "outputs/mlflow.db"  # the default store, beside the runs (relative to the working directory)
TRACKING_SCHEMES = ("http", "https", "sqlite", "file")
RUN_DIR, SWEEP_DIR, KIND = "gradbench.run_dir", "gradbench.sweep_dir", "gradbench.kind"  # tags
SUMMARY_FIGURES = ("steps", "epochs", "train_time_s", "mean_step_time_s", "median_step_time_s", "wall_time_s",
                   "setup_time_s", "num_params", "threads")
ARTIFACTS = ("summary.json", "metrics.csv")  # and every figure the run wrote (summary.json's outputs)
BATCH = 900  # metrics per log_batch call (MLflow takes at most 1000)
FLUSH_EVERY_S = 5.0


def tracking_uri(configured: str | None) -> str:
    """logger.tracking_uri, or the local store: outputs/mlflow.db under the working directory."""
    return str(configured) if configured else f"sqlite:///{(Path.cwd() / LOCAL_STORE).resolve()}"


def check_store(uri: str) -> None:
    """Before any work: a server answers /health (5 s), a local store's folder can be made;
    else one line naming logger.tracking_uri (gradbench.errors.ConfigError: exit 2)."""
    scheme, _, rest = uri.partition(":")
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as answer:
                ok = answer.status == 200
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(f"logger.tracking_uri {uri} is unreachable ({reason}): start the server, or leave "
                              f"logger.tracking_uri null for the local store {LOCAL_STORE}") from None
        if not ok:
            raise ConfigError(f"logger.tracking_uri {uri} is no MLflow server (its /health did not answer OK)")
    elif scheme in ("sqlite", "file"):
        folder = sqlite_path(uri).parent if scheme == "sqlite" else Path(rest.removeprefix("//"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"logger.tracking_uri {uri}: its folder cannot be made ({e.strerror})") from None


def sqlite_path(uri: str) -> Path:
    """sqlite:///relative/file.db or sqlite:////absolute/file.db → the file (SQLAlchemy's form)."""
    return Path(uri.partition(":")[2].removeprefix("///"))


def client(uri: str):
    """An MlflowClient on `uri` (mlflow imported here: only logger=mlflow pays for it)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("logger=mlflow needs mlflow: pip install gradbench[mlflow]") from None
    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    """The experiment's id, created on first use (a local store keeps its artifacts beside it, in
    outputs/mlartifacts/, not in ./mlruns); two jobs creating it at once get the same one."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = (sqlite_path(uri).resolve().parent / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another job created it first (RESOURCE_ALREADY_EXISTS)
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def find_run(mlflow_client, experiment: str, tag: str, value: str, kind: str) -> str | None:
    """The id of the run of `kind` (run, sweep) whose `tag` is `value`, if there is one."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    runs = mlflow_client.search_runs([experiment], f"tags.`{tag}` = '{quoted}' and tags.`{KIND}` = '{kind}'",
                                     max_results=1)
    return runs[0].info.run_id if runs else None


class Tracker:
    """One run dir's MLflow run: opened before training (the store checked), rows sent in
    batches while it trains, the run's end (figures, artifacts, status) read from its files."""

    def __init__(self, settings: DictConfig, run_dir: Path, overrides: list[str], sweep_dir: str | None,
                 resume: bool) -> None:
        self.uri = tracking_uri(settings.get("tracking_uri"))
        check_store(self.uri)
        self.client = client(self.uri)
        self.run_dir = Path(run_dir).resolve()
        self.pending: list = []
        self.sent_at = time.monotonic()
        self.broken: str | None = None  # why the tracker stopped sending (the run goes on)
        experiment = experiment_id(self.client, str(settings.get("experiment") or "gradbench"), self.uri)
        self.run_id = find_run(self.client, experiment, RUN_DIR, str(self.run_dir), "run") if resume else None
        if self.run_id is None:
            tags = {RUN_DIR: str(self.run_dir), KIND: "run"}
            if sweep_dir:
                tags[SWEEP_DIR] = str(Path(sweep_dir).resolve())
                parent = find_run(self.client, experiment, SWEEP_DIR, tags[SWEEP_DIR], "sweep")
                if parent:
                    tags["mlflow.parentRunId"] = parent
            name = " ".join(overrides)[:240] or "defaults"
            self.run_id = self.client.create_run(experiment, tags=tags, run_name=name).info.run_id
            params = {}
            for line in overrides:
                key, _, value = line.partition("=")
                params[key.lstrip("+~")[:250]] = value[:6000]
            self._send(params=params)
        log.info("MLflow run %s in %s", self.run_id, self.uri)

    def around(self, writer):
        """A metrics writer that writes each row to `writer` (metrics.csv), then queues it here."""
        tracker = self

        class Both:
            def write(self, row: dict) -> None:
                writer.write(row)
                tracker.write(row)

        return Both()

    def write(self, row: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.pending.append(Metric(name, float(value), stamp, int(row["step"])))
        if len(self.pending) >= BATCH or time.monotonic() - self.sent_at > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        metrics, self.pending = self.pending, []
        for start in range(0, len(metrics), BATCH):
            self._send(metrics=metrics[start:start + BATCH])
        self.sent_at = time.monotonic()

    def _send(self, metrics=(), params: dict | None = None, tags: dict | None = None) -> None:
        """One log_batch; a failure is a warning once (the run and metrics.csv go on)."""
        from mlflow.entities import Param, RunTag

        if self.broken:
            return
        try:
            self.client.log_batch(self.run_id, metrics=list(metrics),
                                  params=[Param(k, str(v)) for k, v in (params or {}).items()],
                                  tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
        except Exception as e:  # a server gone, a locked store: the run is whole in its run dir
            self.broken = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            log.warning("MLflow: sending to %s failed (%s); the run goes on, whole in %s", self.uri, self.broken,
                        self.run_dir)

    def finish(self) -> None:
        """The run's end from its files: summary.json's figures and tags, the artifacts, the status."""
        summary_path = self.run_dir / "summary.json"
        if not summary_path.is_file() and not self.pending:  # refused before its first step: no run to show
            try:
                self.client.delete_run(self.run_id)
            except Exception as e:
                log.warning("MLflow: removing the empty run %s failed (%s)", self.run_id, str(e).splitlines()[0][:300])
            return
        self.flush()
        try:
            summary = files.read_json(summary_path) if files.exists(summary_path) else {}
        except ValueError:  # BadRunFile too: a run dir is read through gradbench.run.files only
            summary = {}
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(summary.get("steps") or 0)
        # run_<key>: metrics.csv has wall_time_s and step_time_s of its own, per step
        figures = {f"run_{k}": summary[k] for k in SUMMARY_FIGURES if isinstance(summary.get(k), (int, float))}
        for when in ("initial", "final"):
            for split, values in (summary.get(when) or {}).items():
                for name, value in (values or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        figures[f"{when}_{split}_{name}"] = value
        self._send(metrics=[Metric(k, float(v), stamp, step) for k, v in figures.items() if math.isfinite(v)],
                   tags={"stop_reason": summary.get("stop_reason", "failed"), "device": summary.get("device", ""),
                         **{f"choice.{k}": v for k, v in (summary.get("choices") or {}).items() if v is not None}})
        if not self.broken:
            try:
                for name in [*ARTIFACTS, *(o for o in summary.get("outputs", []) if o.endswith((".png", ".pdf", ".svg")))]:
                    if (self.run_dir / name).is_file():
                        self.client.log_artifact(self.run_id, str(self.run_dir / name))
            except Exception as e:
                self.broken = str(e).strip().splitlines()[0][:300]
                log.warning("MLflow: the artifacts did not reach %s (%s); they are in %s", self.uri, self.broken,
                            self.run_dir)
        status = {"interrupted": "KILLED", "failed": "FAILED", "diverged": "FAILED"}.get(
            summary.get("stop_reason", "failed"), "FINISHED")
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:
            log.warning("MLflow: closing run %s failed (%s)", self.run_id, str(e).splitlines()[0][:300])


def open_tracker(cfg: DictConfig, run_dir: Path, resume: bool) -> Tracker | None:
    """The run's Tracker under logger=mlflow (inside a Hydra job), else None."""
    if cfg.logger.get("name") != "mlflow":
        return None
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    sweep = str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None
    return Tracker(cfg.logger, run_dir, list(hydra.overrides.task), sweep, resume)


class SweepRun(Callback):
    """A sweep under logger=mlflow: the store checked and the parent run opened before the first
    job (one line, exit 2, before the sweep dir if the server is unreachable); closed at the end,
    FAILED if a job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        settings = config.get("logger")
        if not isinstance(settings, DictConfig) or settings.get("name") != "mlflow":
            return
        import sys

        try:
            uri = tracking_uri(settings.get("tracking_uri"))
            check_store(uri)
            mlflow_client = client(uri)
        except ConfigError as e:
            print(f"gradbench: error: {e}", file=sys.stderr)
            sys.exit(2)
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        experiment = experiment_id(mlflow_client, str(settings.get("experiment") or "gradbench"), uri)
        if find_run(mlflow_client, experiment, SWEEP_DIR, sweep_dir, "sweep") is None:
            mlflow_client.create_run(experiment, tags={SWEEP_DIR: sweep_dir, KIND: "sweep"},
                                     run_name=f"sweep {config.hydra.sweep.dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        settings = config.get("logger")
        if not isinstance(settings, DictConfig) or settings.get("name") != "mlflow":
            return
        from gradbench.run.sweep import _folder

        try:
            uri = tracking_uri(settings.get("tracking_uri"))
            mlflow_client = client(uri)
            experiment = experiment_id(mlflow_client, str(settings.get("experiment") or "gradbench"), uri)
            parent = find_run(mlflow_client, experiment, SWEEP_DIR, str(Path(config.hydra.sweep.dir).resolve()), "sweep")
            folder = _folder(config.hydra.sweep.dir)
            failed = folder.is_dir() and any(sweep_outcome(p) == "failed" for p in folder.iterdir())
            if parent:
                mlflow_client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
        except Exception as e:  # the jobs' runs are whole; only the parent stays open
            log.warning("MLflow: closing the sweep's parent run failed (%s)", str(e).splitlines()[0][:300])
