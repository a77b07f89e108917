"""`gradbench <command> [args]`: the command-line entry point.

    gradbench train [overrides]      train one config (or a sweep with -m), Hydra-composed
    gradbench --help                 list the commands

Each Hydra command takes the usual Hydra flags: --help, --cfg job, -m/--multirun,
--info defaults-tree, --shell-completion install=bash.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gradbench.errors import ConfigError

# The repository's conf/ (the package is installed editable); absolute, so any cwd works.
CONF = str(Path(__file__).resolve().parent.parent / "conf")
COMMANDS = {
    "train": "train one model (a sweep with -m); outputs under ./outputs/",
}


@hydra.main(config_path=CONF, config_name="config", version_base="1.3")
def _train(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from gradbench.job import train_job

    return _report_errors(lambda: train_job(cfg, Path(HydraConfig.get().runtime.output_dir)))


def _report_errors(job):
    """Bad input ends the run with one clear line (exit status 2), not a traceback."""
    try:
        return job()
    except ConfigError as e:
        print(f"gradbench: error: {e}", file=sys.stderr)
        sys.exit(2)


HYDRA_COMMANDS = {"train": _train}


def usage() -> str:
    lines = ["usage: gradbench <command> [args]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
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
    sys.argv = [program, *rest]  # Hydra parses sys.argv
    HYDRA_COMMANDS[command]()


if __name__ == "__main__":
    main()
