"""The runs of a sweep as data, for `gradbench report`: find and read run dirs, one row per run,
one row per group of seeds with mean and 95% confidence interval (Student t) of each number.

Reads only a run dir's files (summary.json, metrics.csv, .hydra/), so any sweep can be
re-aggregated at any time, also while it is still running.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from gradbench.run import files
from gradbench.run.checkpoint import NEUTRAL, flatten
from gradbench.columns import SPLITS
from gradbench.run.metrics import read_metrics, with_initial

BAD = ("failed", "diverged", "interrupted")  # stop reasons whose numbers are left out of the means

# Student t quantiles t_{0.975, df} for df = 1..30 (two-sided 95%); scipy is not a dependency.
T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
        2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
        2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
        2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
        2.045229642, 2.042272456)


def t975(df: int) -> float:
    """t_{0.975, df}: the table up to df 30, then the Cornish–Fisher expansion (error < 2e-6)."""
    if df < 1:
        return math.nan
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959963984540054  # the normal quantile Φ⁻¹(0.975)
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_ci(values) -> tuple[float, float, int]:
    """(mean, half-width t_{0.975,n−1}·s/√n of the 95% CI, n) over the finite values; CI NaN if n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    return float(x.mean()), t975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n


@dataclass
class Run:
    """One run dir's files: the overrides Hydra saved, summary.json and metrics.csv."""

    path: Path
    overrides: dict[str, str]  # key (Hydra's +/++/~ prefix dropped) → value, in command-line order
    summary: dict
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # empty when there is no metrics.csv
    group: str = ""  # its group's label (assign_groups)
    lines: list[str] = field(default_factory=list)  # the overrides as saved, prefixes kept

    @property
    def ok(self) -> bool:
        return self.summary.get("stop_reason") not in BAD

    @cached_property
    def config(self) -> dict:
        """.hydra/config.yaml as plain data (its interpolations kept as text, never resolved)."""
        path = self.path / ".hydra" / "config.yaml"
        config = files.read_yaml(path, opaque=True) if files.exists(path) else {}
        return config if isinstance(config, dict) else {}

    @cached_property
    def choices(self) -> dict:
        """Group → option; a job that failed during setup has them only in .hydra/hydra.yaml."""
        return self.summary.get("choices") or hydra_choices(self.path)

    def lookup(self, key: str):
        """A key's value for this run: an override, else a group choice, else a dotted config key."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return self.choices[key]
        return select(resolved(self), key)


    def curve(self) -> pd.DataFrame:
        """metrics.csv with the initial evaluation (summary.json) as step 0 at train time 0."""
        return with_initial(self.metrics, self.summary.get("initial"))


def select(config: dict, key: str):
    """A dotted key's value in plain data (None where absent)."""
    node = config
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def hydra_choices(run_dir: Path) -> dict:
    """Group → option, as Hydra saved them in the run's .hydra/hydra.yaml ({} without it)."""
    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    choices = select(files.read_yaml(path, opaque=True) or {}, "hydra.runtime.choices") if files.exists(path) else {}
    return choices if isinstance(choices, dict) else {}


def _natural(path: Path) -> list:
    """Sort key that puts job 10 after job 9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path, columns: Callable[[str], bool] | set[str] | None = None) -> tuple[list[Run], list[Path], dict[Path, str]]:
    """Every run dir under root (a folder with .hydra/overrides.yaml), in natural order; those
    without summary.json yet (still running, or killed) come back separately as skipped, and
    those whose files cannot be read as broken (path → why), so one bad file spoils nothing."""
    # .hydra entries, a symlinked one included (rglob does not descend into it): listed as broken
    dirs = sorted({p.parent for p in Path(root).rglob(".hydra") if p.is_symlink() or (p / "overrides.yaml").exists()},
                  key=_natural)
    runs, skipped, broken = [], [], {}
    for path in dirs:
        if not files.exists(path / "summary.json"):
            skipped.append(path)
            continue
        try:
            runs.append(load_run(path, columns))
        except ValueError as e:  # BadRunFile, UnsafeConfig: one line naming the file
            broken[path] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return runs, skipped, broken


def load_run(path: Path, columns: Callable[[str], bool] | set[str] | None = None) -> Run:
    """One run dir's files, read through gradbench.run.files (regular files, capped, plain data)."""
    # labels only (opaque: a `${` typed on the command line stays text); best.overrides checks them strictly
    lines = files.read_overrides(path / ".hydra" / "overrides.yaml", opaque=True)
    overrides = {}
    for line in lines:
        key, _, value = line.partition("=")
        overrides[key.lstrip("+~")] = value
    summary = files.read_summary(path / "summary.json")
    metrics = read_metrics(path / "metrics.csv", columns)
    text = [c for c, kind in metrics.dtypes.items() if kind.kind not in "biuf"]  # no column lookups: 2000 runs
    if text:  # every column is a number (or empty); text is a damaged file, not a result
        raise ValueError(f"{path / 'metrics.csv'}: column {text[0]} holds text")
    run = Run(path, overrides, summary, metrics, lines=lines)
    if not summary.get("config"):  # then .hydra/config.yaml stands in (resolved): a broken one, broken now
        run.config
    return run


def group_of(run: Run, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """The overrides that define a run's group, sorted by key (their order on the command line
    changes nothing): all but the seed, the ignored keys and the keys that change no result
    (threads, skip_done, plot, ...: gradbench.run.checkpoint.NEUTRAL)."""
    return {k: v for k, v in sorted(run.overrides.items())
            if k != "seed" and k not in ignore and k.split(".")[0] not in NEUTRAL}


def label(group: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in group.items()) or "(defaults)"


def resolved(run: Run) -> dict:
    """The config the run trained with: summary.json's resolved one, else .hydra/config.yaml."""
    return run.summary.get("config") or run.config  # the latter's interpolations: unresolved text


def identity(run: Run, ignore: tuple[str, ...] = ()) -> str:
    """What makes runs one group: the resolved config less the seed, Hydra's settings, the
    result-neutral keys (NEUTRAL), the report's own `reference` and the ignored keys."""
    left_out = {*NEUTRAL, "seed", "hydra", "reference", *ignore}  # dotted keys and all under them
    config = {k: v for k, v in flatten(resolved(run)).items() if not _under(k, left_out)}
    return json.dumps(config, sort_keys=True, default=str)


def _under(key: str, keys: set[str]) -> bool:
    """True if `key` is one of `keys` or under one (a.b.c is under a and a.b): one set lookup per level."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))


def assign_groups(runs: list[Run], ignore: tuple[str, ...] = ()) -> None:
    """Set each run's `group`: runs with one identity share a group, however their overrides
    were ordered or spelled (an override equal to the default changes nothing). The label is
    the first run's overrides (group_of); a label two identities share gets ` #2`, ` #3`."""
    labels: dict[str, str] = {}
    for run in runs:
        key = identity(run, ignore)
        if key not in labels:
            name = label(group_of(run, ignore))
            taken = sum(1 for v in labels.values() if v == name or v.startswith(f"{name} #"))
            labels[key] = name if not taken else f"{name} #{taken + 1}"
        run.group = labels[key]


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


Target = tuple[str, float, str]  # (column, threshold, "below" | "above")


def run_values(run: Run, target: Target | None) -> dict[str, float]:
    """One run's numbers: final metrics per split, best val metrics, steps, times, steps to target."""
    s, m = run.summary, run.metrics
    values = {key: _num(s.get(key)) for key in ("steps", "mean_step_time_s", "train_time_s")}
    for kind, count in (s.get("passes") or {}).items():  # what a step costs (Estimator.passes)
        values[f"passes_{kind}"] = _num(count)
    for split, metrics in (s.get("final") or {}).items():
        values.update({f"{split}_{name}": _num(v) for name, v in metrics.items()})
    if "val_loss" in m:
        values["best_val_loss"] = _num(m["val_loss"].min())
    if "val_accuracy" in m:
        values["best_val_accuracy"] = _num(m["val_accuracy"].max())
    if target is not None:
        column, threshold, side = target
        if column not in m:
            reached = m.iloc[:0]
        else:
            reached = m[m[column] < threshold] if side == "below" else m[m[column] >= threshold]
        hit = reached.iloc[0] if len(reached) else None
        values["steps_to_target"] = _num(hit["step"]) if hit is not None else math.nan
        values["time_to_target_s"] = _num(hit["train_time_s"]) if hit is not None else math.nan
    elif s.get("stop_reason") == "threshold":  # stop_below fired: the run's end is the target
        values["steps_to_target"], values["time_to_target_s"] = values["steps"], values["train_time_s"]
    return values


def runs_frame(runs: list[Run], ignore: tuple[str, ...] = (), target: Target | None = None) -> pd.DataFrame:
    """One row per run: its group label, seed, stop reason, ok, and run_values."""
    rows = [{"group": r.group or label(group_of(r, ignore)), "seed": r.overrides.get("seed", r.summary.get("seed")),
             "path": str(r.path), "stop_reason": r.summary.get("stop_reason", ""), "ok": r.ok,
             **run_values(r, target)} for r in runs]
    frame = pd.DataFrame(rows)
    if "steps_to_target" in frame:
        frame["reached"] = frame["steps_to_target"].notna()
    return frame


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The numbers to aggregate, in table order: steps, target, per split final (+ best val), times."""
    names = ["steps", "steps_to_target", "time_to_target_s"]
    for split in SPLITS:
        names += [c for c in frame.columns if c.startswith(f"{split}_") and c not in ("train_time_s",)]
        if split == "val":
            names += ["best_val_loss", "best_val_accuracy"]
    names += ["mean_step_time_s", "train_time_s", "passes_forward", "passes_forward_mode", "passes_backward"]
    return [c for c in names if c in frame]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per group (first-seen order): run counts, stop reasons, and for each metric its mean
    and 95% CI half-width (`<metric>_ci`) over the group's runs that did not fail or diverge."""
    metrics = metric_columns(frame)
    rows = []
    for name, runs in frame.groupby("group", sort=False):
        ok = runs[runs["ok"]]
        reasons = runs["stop_reason"].value_counts()
        row = {"group": name, "n": len(runs), "ok": len(ok), "failed": len(runs) - len(ok),
               # what a group none of whose runs finished shows in its cells
               "status": "ok" if len(ok) else reasons.index[0] if len(reasons) == 1 else "failed",
               "stops": ", ".join(f"{r}×{k}" for r, k in reasons.items())}
        if "reached" in frame:
            row["reached"] = int(ok["reached"].sum())
        for metric in metrics:
            row[metric], row[f"{metric}_ci"], _ = mean_ci(ok[metric])
        rows.append(row)
    return pd.DataFrame(rows)
