"""`gradbench <command> [args]`: the command-line entry point.

    gradbench train [overrides]      train one config (or a sweep with -m), Hydra-composed
    gradbench --help                 list the commands

Each Hydra command takes the usual Hydra flags: --help, --cfg job, -m/--multirun,
--info defaults-tree, --shell-completion install=bash.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

import yaml

import hydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gradbench.errors import ConfigError, Interrupted, JobFailed, OccupiedRunDir
from gradbench.job import worst
from gradbench.metrics import write_json
from gradbench.models.functions import sphere_forward_lr
from gradbench.sweep import RESULT, die_with_parent, guard_sweep, in_worker, record


def config_dir() -> str:
    """The packaged configs: gradbench/conf/ in an installed wheel (pyproject.toml maps conf/
    there), else the source tree's conf/ (an editable install). Absolute, so any cwd works;
    `--config-dir DIR` adds a user's own options on top (Hydra's flag)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"gradbench's configs are missing: neither {package / 'conf'} nor {package.parent / 'conf'} exists")


CONF = config_dir()
# conf/protocol/functions_sphere.yaml: lr = the forward gradient's best step on the sphere
OmegaConf.register_new_resolver("forward_gradient_sphere_lr", sphere_forward_lr, replace=True)


def _hydra_command(job_path: str, job_name: str):
    """A Hydra entry point that runs `module:function(cfg, run_dir)` as one job."""

    @hydra.main(config_path=CONF, config_name="config", version_base="1.3")
    def command(cfg: DictConfig):
        from hydra.core.hydra_config import HydraConfig

        module, function = job_path.split(":")
        job = getattr(importlib.import_module(module), function)
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        return run_job(lambda: job(cfg, run_dir), run_dir, multirun=hydra_cfg.mode == RunMode.MULTIRUN)

    command.__name__ = job_name
    return command


def run_job(job, run_dir: Path, multirun: bool):
    """Run one job. Bad input ends a single run with one clear line (exit status 2) and leaves no
    empty run dir. Inside a sweep, any failure is recorded in the job's summary.json and the
    sweep goes on. An interrupted run exits 128 + signal (a sweep in this process stops)."""
    if multirun:
        die_with_parent()
    try:
        return job()
    except Interrupted as e:
        print(f"gradbench: {e}", file=sys.stderr)
        if in_worker():  # a joblib worker: take no further job
            logging.shutdown()
            sys.stderr.flush()
            os._exit(128 + e.signum)
        sys.exit(128 + e.signum)
    except OccupiedRunDir as e:  # never touch the other run's files
        if not multirun:
            print(f"gradbench: error: {e}", file=sys.stderr)
            sys.exit(2)
        record(run_dir, "failed")
        logging.getLogger("gradbench").error("job refused, sweep goes on: %s", e)
    except ConfigError as e:
        if not multirun:
            print(f"gradbench: error: {e}", file=sys.stderr)
            discard_if_empty(run_dir)
            sys.exit(2)
        record_failure(run_dir, f"ConfigError: {e}")
    except JobFailed as e:
        if not multirun:
            print(f"gradbench: failed: {e}", file=sys.stderr)
            sys.exit(1)
        record_failure(run_dir, f"JobFailed: {e}")
    except OSError as e:  # a full disk, a file that cannot be written: what is on disk stays
        if not multirun:
            print(f"gradbench: error: writing the outputs in {run_dir} failed: {e}", file=sys.stderr)
            sys.exit(1)
        record_failure(run_dir, f"OSError: {e}")
    except Exception:
        if not multirun:
            raise
        record_failure(run_dir, traceback.format_exc())
    return worst()  # the sweeper's worst value: the study goes on


def record_failure(run_dir: Path, error: str) -> None:
    """Mark a failed sweep job (keeping a summary.json the job already wrote) and log why."""
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    except ValueError:  # a broken summary of this job's own earlier try
        summary = {}
    summary.update(stop_reason="failed", error=error)
    write_json(summary_path, summary)
    record(run_dir, "failed")
    logging.getLogger("gradbench").error("job failed, sweep goes on: %s", error.strip().splitlines()[-1])


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run dir that holds nothing but what Hydra wrote on entry (.hydra/, the log)."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the date folder, if this was its only run


def resume_arguments(rest: list[str]) -> list[str]:
    """`train resume=RUN_DIR ...`: the run's own overrides (from RUN_DIR/.hydra/overrides.yaml),
    then the ones given now (which win), writing into RUN_DIR and leaving its .hydra/ as it is."""
    given = [a for a in rest if a.startswith("resume=")]
    value = given[-1].partition("=")[2] if given else ""
    if value.lower() in ("", "true", "false", "null"):
        return rest
    path = Path(value).expanduser()
    saved = path / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        print(f"gradbench: error: resume must be true or a run dir (with .hydra/overrides.yaml), got {value!r}",
              file=sys.stderr)
        sys.exit(2)
    key = lambda arg: arg.partition("=")[0].lstrip("+~")  # noqa: E731
    mine = {key(a) for a in rest}
    original = [str(a) for a in yaml.safe_load(saved.read_text()) or [] if key(str(a)) not in mine]
    return [*original, *rest, f"hydra.run.dir={path}", "hydra.output_subdir=null"]


COMMANDS = {
    "train": "train one model (a sweep with -m); outputs under ./outputs/",
    "check": "compare every gradient estimator with autograd at one point (float64)",
    "report": "aggregate a sweep directory into tables and plots",
    "data": "load (download once, cache) the configured dataset and print its splits",
    "bench": "time estimate + update of several estimators side by side (ratios, R, peak memory)",
    "bench-report": "gather bench runs into one table and draw scaling curves",
    "eval": "evaluate a finished run's model.pt on a split (metrics, confusion, predictions)",
    "functions": "draw test-function runs: paths over contours, the sphere's steps against dimension",
}
HYDRA_COMMANDS = {
    "train": _hydra_command("gradbench.job:train_job", "train"),
    "check": _hydra_command("gradbench.check:check_job", "check"),
    "data": _hydra_command("gradbench.job:data_job", "data"),
    "bench": _hydra_command("gradbench.bench:bench_job", "bench"),
}
PLAIN_COMMANDS = {"report": "gradbench.report:main", "bench-report": "gradbench.bench_report:main",
                  "eval": "gradbench.evaluate:main", "functions": "gradbench.functions_report:main"}  # argparse commands: function(argv)


def complete_command(argv: list[str]) -> bool:
    """Tab completion (`eval "$(gradbench -sc install=bash)"`): Hydra's script calls
    `gradbench -sc query=bash` with the line in COMP_LINE. The command word completes to the
    commands; a Hydra command's overrides are Hydra's to complete, once the command word is out
    of the line (True: go on to Hydra); a plain command's arguments are the shell's (file names)."""
    line = os.environ.get("COMP_LINE")
    if line is None or not any(a.startswith("query=") for a in argv):
        return True  # install / uninstall: Hydra writes the script
    point = int(os.environ.get("COMP_POINT", len(line)))
    words = line[:point].split(" ")
    if len(words) <= 2:  # still typing the command; the shell filters by what is typed
        print("\n".join(COMMANDS))
        return False
    if words[1] not in HYDRA_COMMANDS:
        return False  # no choices: the shell completes file names (`gradbench report outputs/<TAB>`)
    cut = len(words[0]) + 1 + len(words[1])
    os.environ["COMP_LINE"] = line[:len(words[0])] + line[cut:]
    os.environ["COMP_POINT"] = str(point - len(words[1]) - 1)
    return True


def usage() -> str:
    lines = ["usage: gradbench <command> [args]", "", "commands:"]
    lines += [f"  {name:<13} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`gradbench <command> --help` shows a command's options and config groups."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    # torch.func's first jvp scripts its decompositions with torch.jit: torch's own warning.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    argv = sys.argv[1:] if argv is None else list(argv)
    program = os.path.basename(sys.argv[0]) or "gradbench"
    if argv and argv[0] in ("-sc", "--shell-completion"):
        if not complete_command(argv):
            return
        argv = ["train", *argv]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"gradbench: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if command in PLAIN_COMMANDS:
        module, function = PLAIN_COMMANDS[command].split(":")
        sys.exit(getattr(importlib.import_module(module), function)(rest))
    os.environ["GRADBENCH_COMMAND"] = command  # hydra.job.name: the log file is <command>.log
    if command == "train":
        rest = resume_arguments(rest)
    sys.argv = [program, *rest]  # Hydra parses sys.argv
    RESULT.clear()
    sweep = guard_sweep() if {"-m", "--multirun"} & set(rest) else contextlib.nullcontext()
    try:
        with sweep:
            HYDRA_COMMANDS[command]()
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (a parallel sweep's parent, say)
        print("gradbench: interrupted", file=sys.stderr)
        sys.exit(130)
    if RESULT.get("counts", {}).get("failed"):
        sys.exit(1)  # a sweep with failed jobs, after every job ran (the tally line says which)


if __name__ == "__main__":
    main()
