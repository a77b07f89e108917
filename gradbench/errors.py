"""The exceptions the CLI prints as one line, without a traceback: bad user input (exit
status 2), a job whose verdict is a failure (exit status 1), an interrupted run (128 + signal)."""

import re
import shlex
import signal


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key and what is allowed."""


class JobFailed(RuntimeError):
    """A job that ran to the end and wrote its outputs, but whose verdict is a failure (e.g.
    `gradbench check` found an estimator that disagrees): one line, exit status 1."""


class OccupiedRunDir(ConfigError):
    """The run dir holds a run this job must leave as it is (another config's, one another
    process is writing, a broken, diverged or finished one): the job refuses before writing,
    and a sweep records the refusal without touching the run's files."""


class UnsafeConfig(OccupiedRunDir):
    """A config read back from a run dir names code to call (gradbench.run.targets): nothing is
    called and nothing written."""


class BadRunFile(OccupiedRunDir):
    """A run-dir file that is no file gradbench writes (a symlink, a FIFO, too large, nested too
    deep, an alias or a tag in its YAML, another shape): refused in one line naming it
    (gradbench.run.files)."""


class Interrupted(Exception):
    """A run stopped by SIGINT / SIGTERM after writing every output: exit status 128 + signum."""

    def __init__(self, signum: int, run_dir, steps: int, stopped: str = "interrupted") -> None:
        name = signal.Signals(signum).name
        if stopped == "interrupted":
            message = (f"interrupted by {name} after {steps} steps; outputs and checkpoint in {run_dir} "
                       f"(continue with: {resume_command(run_dir)})")
        else:  # the signal came while a run that had stopped by itself wrote its outputs
            message = (f"{name} while writing the outputs of a run stopped on {stopped} after {steps} steps; "
                       f"they are all in {run_dir}")
        super().__init__(message)
        self.signum = signum


class WriteFailed(Exception):
    """An output that could not be written (a full disk, a quota, a file size limit). Outputs
    are written to a temporary file and renamed, so the file under the final name is the old
    one or none, never an empty or partial one; the message is one line."""

    def __init__(self, path, error: OSError) -> None:
        reason = (error.strerror or str(error)).lower()  # "no space left on device"
        super().__init__(f"writing {path} failed: {reason}")
        self.errno = error.errno


def hydra_quote(value: str) -> str:
    """`value` as one Hydra override value that parses back to itself: as it is when made of
    plain characters, else double-quoted (a comma, a space, a non-ASCII letter), with the
    quotes, the backslashes before a quote and interpolations escaped (Hydra's grammar)."""
    if re.fullmatch(r"[A-Za-z0-9_/.+@%-]+", value):
        return value
    escaped = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""), value)
    return '"' + escaped.replace("${", "\\${") + '"'


def resume_command(run_dir) -> str:
    """The command that continues `run_dir`, ready to paste into a POSIX shell."""
    return "gradbench train " + shlex.quote(f"resume={hydra_quote(str(run_dir))}")


def require(ok: bool, key: str, rule: str, got: object) -> None:
    """Raise `ConfigError("<key> <rule>, got <got>")` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} {rule}, got {got!r}")


def choose(key: str, value: str, allowed: dict):
    """Look `value` up in `allowed`, or fail naming `key` and the allowed values."""
    require(value in allowed, key, f"must be one of {' | '.join(allowed)}", value)
    return allowed[value]
