"""`gradbench <command> [args]`: the command-line entry point.

    gradbench train [overrides]      train one config (or a sweep with -m), Hydra-composed
    gradbench --help                 list the commands

Each Hydra command takes the usual Hydra flags: --help, --cfg job, -m/--multirun,
--info defaults-tree, --shell-completion install=bash.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.types import RunMode
from omegaconf import DictConfig

from gradbench.errors import ConfigError, JobFailed
from gradbench.metrics import write_json

# The repository's conf/ (the package is installed editable); absolute, so any cwd works.
CONF = str(Path(__file__).resolve().parent.parent / "conf")


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
    """Run one job. Bad input ends a single run with one clear line (exit status 2). Inside a
    sweep, any failure is recorded in the job's summary.json and the sweep goes on."""
    try:
        return job()
    except ConfigError as e:
        if not multirun:
            print(f"gradbench: error: {e}", file=sys.stderr)
            sys.exit(2)
        record_failure(run_dir, f"ConfigError: {e}")
    except JobFailed as e:
        if not multirun:
            print(f"gradbench: failed: {e}", file=sys.stderr)
            sys.exit(1)
        record_failure(run_dir, f"JobFailed: {e}")
    except Exception:
        if not multirun:
            raise
        record_failure(run_dir, traceback.format_exc())
    return math.nan


def record_failure(run_dir: Path, error: str) -> None:
    """Mark a failed sweep job (keeping a summary.json the job already wrote) and log why."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update(stop_reason="failed", error=error)
    write_json(summary_path, summary)
    logging.getLogger("gradbench").error("job failed, sweep goes on: %s", error.strip().splitlines()[-1])


COMMANDS = {
    "train": "train one model (a sweep with -m); outputs under ./outputs/",
    "check": "compare every gradient estimator with autograd at one point (float64)",
    "report": "aggregate a sweep directory into tables and plots",
    "data": "load (download once, cache) the configured dataset and print its splits",
    "bench": "time estimate + update of several estimators side by side (ratios, R, peak memory)",
    "bench-report": "gather bench runs into one table and draw scaling curves",
}
HYDRA_COMMANDS = {
    "train": _hydra_command("gradbench.job:train_job", "train"),
    "check": _hydra_command("gradbench.check:check_job", "check"),
    "data": _hydra_command("gradbench.job:data_job", "data"),
    "bench": _hydra_command("gradbench.bench:bench_job", "bench"),
}
PLAIN_COMMANDS = {"report": "gradbench.report:main", "bench-report": "gradbench.bench_report:main"}  # argparse commands: function(argv)


def usage() -> str:
    lines = ["usage: gradbench <command> [args]", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`gradbench <command> --help` shows a command's options and config groups."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    # torch.func's first jvp scripts its decompositions with torch.jit: torch's own warning.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    argv = sys.argv[1:] if argv is None else list(argv)
    program = os.path.basename(sys.argv[0]) or "gradbench"
    if argv and argv[0] in ("-sc", "--shell-completion"):
        # The completion script Hydra installs calls `gradbench -sc query=bash` with the
        # whole line in COMP_LINE: drop the command word so Hydra sees only overrides.
        words = os.environ.get("COMP_LINE", "").split(" ")
        if len(words) > 1 and words[1] in HYDRA_COMMANDS:
            os.environ["COMP_LINE"] = " ".join(words[:1] + words[2:])
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
    sys.argv = [program, *rest]  # Hydra parses sys.argv
    HYDRA_COMMANDS[command]()


if __name__ == "__main__":
    main()
