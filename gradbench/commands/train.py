"""`gradbench train` (and `gradbench data`): one training run from a composed config —
validate, build (gradbench.run.job), train (gradbench.run.train), then write the run dir:
metrics, checkpoint, model.pt, the figures (gradbench.present.plots), summary.json last.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gradbench.columns import STEP_COLUMNS, eval_columns
from gradbench.errors import ConfigError, Interrupted, OccupiedRunDir, WriteFailed
from gradbench.estimators import Estimator
from gradbench.estimators.base import Passes
from gradbench.estimators.probes import GradientProbe
from gradbench.models import count_parameters
from gradbench.run import checkpoint, rundir, targets, threads
from gradbench.run.event_log import open_log
from gradbench.run.job import Setup, build, check_run_files, finished_run, set_deterministic, setup, step_flops, stored_config, \
    stream, validate
from gradbench.run.files import atomic_write
from gradbench.run.metrics import MetricsWriter, remove_stale, write_json
from gradbench.run.sweep import record
from gradbench.run.tracker import open_tracker
from gradbench.run.train import Result, Signals, Step, StopRule, predict, train

log = logging.getLogger(__name__)


def data_job(cfg: DictConfig, run_dir: Path) -> None:
    """Load (download, preprocess, cache) the configured dataset and print its splits."""
    validate(cfg)
    data = build(cfg.dataset, "dataset", generator=stream(cfg.seed, "data"))
    print(f"{cfg.dataset._target_.rsplit('.', 1)[-1]}: input shape {list(data.input_shape)}, "
          f"classes {data.num_classes}")
    for name, split in data.splits.items():
        counts = "" if split.y is None else f", per class {torch.bincount(split.y).tolist()}"
        print(f"  {name:<5} {len(split):>6} examples{counts}")


def train_job(cfg: DictConfig, run_dir: Path) -> float:
    """Train one config into `run_dir`, holding its write lock (gradbench.run.rundir); returns the
    headline metric for sweepers."""
    with rundir.lock(run_dir):
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> float:
    started = time.perf_counter()
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    check_run_files(run_dir)  # every file read later, refused now if broken: before any write
    resume = _checkpoint_to_resume(cfg, run_dir, config)  # also refuses a dir of another config's run
    if (done := _left_as_it_is(cfg, run_dir, resume)) is not None:
        return done
    # logger=mlflow: the store checked (an unreachable server: one line, exit 2) before any work
    tracker = open_tracker(cfg, run_dir, resume=resume is not None)
    try:
        return _trained(cfg, run_dir, config, resume, started, tracker)
    finally:
        if tracker is not None:  # the MLflow run's end, read from the run dir's files
            tracker.finish()


def _trained(cfg: DictConfig, run_dir: Path, config: dict, resume: dict | None, started: float, tracker) -> float:
    set_deterministic(cfg.deterministic)
    s = setup(cfg)
    torch.set_num_threads(threads.choose(cfg.threads, s.device, lambda: step_flops(s, cfg.batch_size)))
    estimator: Estimator = build(cfg.estimator, "estimator", generator=stream(cfg.seed, "tangents", s.device))
    estimator.bind(s.model)  # an estimator that cannot handle this model refuses before any step
    optimizer = build(cfg.optimizer, "optimizer", params=list(s.params.values()))
    scheduler = build(cfg.schedule, "schedule", optimizer=optimizer)
    splits = [name for name in cfg.eval_splits if len(s.data.splits[name])]
    probes = (GradientProbe(estimator),) if cfg.diagnose else ()
    columns = [*STEP_COLUMNS, *(c for probe in probes for c in probe.columns),
               *eval_columns(splits, s.model.metric_names)]
    metrics_before = None
    if resume:  # a checkpoint or metrics.csv the run cannot continue from: refused before any write
        rundir.check_state(run_dir / checkpoint.FILE, resume, s.params, optimizer, scheduler, estimator, Result)
        metrics_before = rundir.check_metrics(run_dir / "metrics.csv", columns, resume["step"])
    setup_time = time.perf_counter() - started
    log.info("run dir %s | %s | %d parameters | device %s", run_dir, _choices(), count_parameters(s.params), s.device)

    for stale in remove_stale(run_dir):
        log.info("removed %s, left by a run killed while writing it", stale.name)
    result, signals = Result(stop_reason="failed"), Signals()
    # The handlers stay through the end writes (checkpoint, model, plots, summary): a signal
    # there lets them finish, they are short; the exit status says it came.
    with signals:
        try:
            after = resume["step"] if resume else None
            with MetricsWriter(run_dir / "metrics.csv", columns, resume_after=after) as csv_rows, \
                    open_log(cfg.logger.name, csv_rows, run_dir, after) as writer:  # logger=tensorboard: + event files
                writer = tracker.around(writer) if tracker else writer  # logger=mlflow: + the MLflow run
                result = train(
                    s.model, s.params, s.data, Step(estimator, optimizer, scheduler), writer,
                    batch_size=cfg.batch_size, eval_every=cfg.eval_every, eval_splits=splits,
                    eval_chunk=cfg.eval_chunk, generator=stream(cfg.seed, "batches"),
                    log_every_s=cfg.log_every_s, probes=probes,
                    stop=StopRule(cfg.max_steps, cfg.max_epochs, cfg.stop_below),
                    checkpoint=lambda state: checkpoint.save(run_dir, {**state, "config": config}),
                    checkpoint_every=cfg.checkpoint_every, resume=resume, signals=signals)
        except Exception:
            try:  # a resumed run that failed before its next checkpoint: the dir as the command found it
                if not (resume and rundir.roll_back(run_dir, resume["step"], metrics_before)):
                    _finish(cfg, config, run_dir, s, result, setup_time, error=traceback.format_exc(),
                            passes=estimator.passes(s.model), estimator_state=list(estimator.state_dict()))
            except WriteFailed as e:  # a full disk: the first failure is the one to report
                log.error("%s", e)
            raise
        _finish(cfg, config, run_dir, s, result, setup_time, passes=estimator.passes(s.model),
                estimator_state=list(estimator.state_dict()))
        record(run_dir, "finished" if result.stop_reason not in ("diverged", "interrupted") else result.stop_reason)
    log.info("stopped: %s after %d steps (%.3g s training, %.3g s/step mean) → %s",
             stop_text(result), result.steps, result.train_time_s, result.mean_step_time_s, run_dir)
    if signals.signum is not None or result.stop_reason == "interrupted":
        raise Interrupted(signals.signum or signal.SIGINT, run_dir, result.steps, result.stop_reason)
    return headline(result.final, cfg.sweep_metric)


def stop_text(result: Result) -> str:
    """The stop reason as the log and summary say it: `diverged at step N`, `max_steps`, ..."""
    if result.stop_reason == "diverged" and result.diverged_at_step is not None:
        return f"diverged at step {result.diverged_at_step}"
    return result.stop_reason


def _checkpoint_to_resume(cfg: DictConfig, run_dir: Path, config: dict) -> dict | None:
    """The checkpoint to continue from (`resume`), after making sure `run_dir` holds no run of
    another config: its stored config must equal this one but for keys that change no result
    (and, when resuming, the stop rules)."""
    stored = stored_config(run_dir)
    if stored is not None:
        ignore = checkpoint.NEUTRAL + (checkpoint.STOP_RULES if cfg.resume else ())
        diff = checkpoint.differences(stored, config, ignore)
        if diff:
            raise OccupiedRunDir(f"{run_dir} holds a run of another config ({'; '.join(diff[:4])}"
                                 f"{'; ...' if len(diff) > 4 else ''}): use another run or sweep dir")
    if not cfg.resume:
        return None
    state = checkpoint.load(run_dir, targets.job_config_dir())
    if state is None and cfg.resume is not True:  # resume=RUN_DIR names one run: it must be there
        raise ConfigError(f"resume must name a run dir with a {checkpoint.FILE}, got {cfg.resume!r}")
    return state


def _left_as_it_is(cfg: DictConfig, run_dir: Path, resume: dict | None) -> float | None:
    """The headline of a stored run this job leaves as it is, or None to train. A run that is
    done or diverged is skipped under skip_done or a sweep's resume=true, and refused under
    resume=RUN_DIR; one past the new budget is always refused (gradbench.run.rundir.verdict)."""
    done = finished_run(run_dir) if (cfg.skip_done or cfg.resume) else None
    if done is None and resume is None:
        return None
    kind, why = rundir.verdict(resume, done, StopRule(cfg.max_steps, cfg.max_epochs, cfg.stop_below))
    if kind == "go":
        return None
    if kind == "past" or (isinstance(cfg.resume, str) and not cfg.skip_done):
        raise OccupiedRunDir(f"{run_dir}: {why}")
    log.info("skipped: %s already holds a run of this config: %s", run_dir, why)
    record(run_dir, "skipped")
    return headline(done["final"], cfg.sweep_metric) if done else worst()


def headline(final: dict[str, dict[str, float]], metric: str) -> float:
    """The final `<split>_<metric>` a sweeper optimises; train_<metric> if the split is empty.
    A run without a finite value (diverged) gives the sweeper its worst value (`worst`)."""
    split, _, name = metric.partition("_")
    for source in (split, "train"):
        value = final.get(source, {}).get(name)
        if value is not None and math.isfinite(value):
            return value
    return worst()


def worst() -> float:
    """What a diverged or failed job returns to a sweeper: +inf where it minimises, −inf where
    it maximises (Optuna's `hydra.sweeper.direction`). Optuna records such a trial as complete
    and worst, and the study goes on; NaN would fail the trial and abort the study."""
    from hydra.core.hydra_config import HydraConfig

    direction = HydraConfig.get().sweeper.get("direction", "minimize")
    direction = direction[0] if isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction) else direction
    return -math.inf if str(direction).lower().endswith("maximize") else math.inf


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def _choices() -> str:
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    return " ".join(f"{g}={choices[g]}" for g in ("dataset", "model", "estimator", "optimizer") if g in choices)


def _plot(run_dir: Path, initial: dict) -> list[str]:
    """The run's figures as PNGs, each written atomically (plots.plot_run saves in place, where
    a full disk would leave a partial PNG under its final name)."""
    import matplotlib.pyplot as plt  # matplotlib: only a run that draws imports it

    from gradbench.present.plots import draw_run

    written = []
    for figure, fig in draw_run(run_dir, initial).items():
        try:  # dpi: plots.plot_run's
            atomic_write(run_dir / f"{figure}.png", lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
        finally:
            plt.close(fig)
        written.append(f"{figure}.png")
    return written


def _finish(cfg: DictConfig, config: dict, run_dir: Path, s: Setup, result: Result, setup_time: float,
            error: str | None = None, passes: Passes | None = None, estimator_state: list[str] = ()) -> None:
    """model.pt, plots, then summary.json last (atomically): written whatever the stop reason,
    so a summary on disk means every output it lists is there."""
    from hydra.core.hydra_config import HydraConfig

    outputs = ["metrics.csv", checkpoint.FILE] if result.steps else []
    if cfg.save_model:
        # everything to rebuild and evaluate the model on raw inputs (README, "What a run writes"),
        # resolved: a run dir holds no `${` (gradbench.run.files refuses one)
        model = {"state_dict": s.model.state_dict(), "model": config["model"],
                 "config": config, "dtype": cfg.dtype, "input_shape": list(s.data.input_shape),
                 "num_classes": s.data.num_classes, "class_names": s.data.class_names,
                 "preprocessing": s.data.preprocessing,
                 # the estimator's own tensors (FA / DFA's feedback matrices): training state, kept in
                 # checkpoint.pt, not part of the model (not in state_dict, not needed to evaluate it)
                 "not_part_of_model": [f"checkpoint.pt:estimator.{k}" for k in estimator_state]}
        atomic_write(run_dir / "model.pt", lambda f: torch.save(model, f), binary=True)
        outputs.append("model.pt")
    if cfg.plot and result.steps:
        outputs += _plot(run_dir, result.initial)
    summary = {
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_time_s": result.train_time_s,
        "mean_step_time_s": result.mean_step_time_s,
        "median_step_time_s": result.median_step_time_s,
        "wall_time_s": result.wall_time_s,
        "setup_time_s": setup_time,
        "num_params": count_parameters(s.params),
        "device": str(s.device),
        "threads": torch.get_num_threads(),
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "choices": {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")},
        "overrides": _overrides(),
        "estimator": config["estimator"],  # resolved, as config
        "config": config,
        "outputs": outputs,
        "initial": result.initial,
        "final": result.final,  # a diverged run's accuracy and errors: null (not a result)
        "diverged_at_step": result.diverged_at_step,
        "class_names": s.data.class_names,
        # what one step costs in passes over the batch (Estimator.passes): the figure that transfers
        "passes": None if passes is None else {k: float(v) for k, v in dataclasses.asdict(passes).items()},
    }
    if error:
        summary["error"] = error
    test = s.data.splits["test"]  # a diverged model's confusion is not a result either
    if result.stop_reason != "diverged" and s.data.num_classes and len(test) and test.y is not None:
        summary["test_confusion"] = s.model.confusion(predict(s.model, s.params, test.x, cfg.eval_chunk), test.y).tolist()
    write_json(run_dir / "summary.json", summary)
