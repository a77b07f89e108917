"""The exceptions the CLI prints as one line, without a traceback: bad user input (exit
status 2), a job whose verdict is a failure (exit status 1), an interrupted run (128 + signal)."""

import signal


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key and what is allowed."""


class JobFailed(RuntimeError):
    """A job that ran to the end and wrote its outputs, but whose verdict is a failure (e.g.
    `gradbench check` found an estimator that disagrees): one line, exit status 1."""


class OccupiedRunDir(ConfigError):
    """The run dir holds a run of another config: a job never writes into it."""


class Interrupted(Exception):
    """A run stopped by SIGINT / SIGTERM after writing every output: exit status 128 + signum."""

    def __init__(self, signum: int, run_dir, steps: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} after {steps} steps; outputs and "
                         f"checkpoint in {run_dir} (continue with: gradbench train resume={run_dir})")
        self.signum = signum


def require(ok: bool, key: str, rule: str, got: object) -> None:
    """Raise `ConfigError("<key> <rule>, got <got>")` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} {rule}, got {got!r}")


def choose(key: str, value: str, allowed: dict):
    """Look `value` up in `allowed`, or fail naming `key` and the allowed values."""
    require(value in allowed, key, f"must be one of {' | '.join(allowed)}", value)
    return allowed[value]
