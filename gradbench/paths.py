"""Where gradbench's own configs are, and the groups every run chooses from them: the facts the
CLI, the run-dir checks and the figures' titles all need.

Ground floor: imports only the standard library, so `gradbench --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path


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

# The config groups of conf/config.yaml's defaults list: a run's choice of each names what ran.
GROUPS = ("dataset", "model", "estimator", "optimizer", "schedule")
