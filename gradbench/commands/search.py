"""`gradbench search EXPERIMENT --out DIR [OVERRIDES]`: the same search for every method, then the
best methods trained longer on fresh seeds (make backprop-free; README "The backprop-free table").

    gradbench search backprop_free --out outputs/reports/backprop_free [device=cpu] [search.steps=500]

The experiment's `search:` block (conf/experiment/backprop_free.yaml) lists the methods and the
grid. Stage 1, per method: one `gradbench train -m` sweep per optimizer over its rates (× head
layouts for local-loss methods) on one seed, into DIR/search/<method>/<optimizer>/; where the
best trial's rate sits on its grid's edge, one more rate beyond it (DIR/search/<method>/
<optimizer>-extended/), once; then `gradbench report` on the method's dir chooses by the
selection metric and writes its best.overrides (report's writer, not a second one). The
search's tables: DIR/search/search.md (per method) and trials.md (every trial). Stage 2: the
`long.top` best methods by that metric (the baseline always among them), each with its
best.overrides plus `long.overrides` for `long.steps` steps on `long.seeds`, into DIR/long/<method>/.

Resumable: every sweep runs with skip_done=true, so a second call skips the finished jobs and
decides the same. A method whose estimator (or other group option) has no config file is
skipped with one line (the issue-22 methods until they land). Overrides other than `search.*`
go to every training run (device=cpu, hydra/launcher=basic, dataset=penguins for a test).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from gradbench.errors import hydra_quote
from gradbench.paths import CONF, GROUPS
from gradbench.present.report_runs import find_runs, run_values
from gradbench.present.search_table import write_methods, write_trials

Train = Callable[[list[str]], int]  # `gradbench train` arguments → exit status


def subprocess_train(args: list[str]) -> int:
    """`gradbench train ARGS` in a fresh process (its output goes to ours)."""
    return subprocess.run([sys.executable, "-m", "gradbench.cli", "train", *args]).returncode


def say(text: str) -> None:
    print(f"gradbench search: {text}", file=sys.stderr, flush=True)


def load_spec(experiment: str, overrides: list[str]) -> dict:
    """The experiment's `search:` block, composed with the overrides (search.* ones included)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", [f"+experiment={experiment}", *overrides])
    if "search" not in cfg:
        raise ValueError(f"experiment {experiment}: has no `search:` block (conf/experiment/backprop_free.yaml has one)")
    spec = OmegaConf.to_container(cfg.search, resolve=True)
    for key in ("seed", "steps", "select", "factors", "extend_by", "layouts", "optimizers", "methods", "long"):
        if key not in spec:
            raise ValueError(f"search.{key}: missing from experiment {experiment}'s search block")
    if not spec["factors"] or any(f <= 0 for f in spec["factors"]) or spec["extend_by"] <= 1:
        raise ValueError("search.factors must be positive numbers and search.extend_by > 1")
    return spec


def missing_option(overrides: list[str]) -> str | None:
    """Why a method cannot run here: a group option without its conf/<group>/<option>.yaml."""
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in GROUPS and not (Path(CONF) / key / f"{value}.yaml").exists():
            return f"conf/{key}/{value}.yaml does not exist"
    return None


def rates(centre: float, factors: list[float]) -> list[float]:
    """centre × each factor, to 3 significant digits (an override reads 0.0333, not 0.033299999)."""
    return [float(f"{centre * f:.3g}") for f in factors]


def text(values) -> str:
    return ",".join(f"{v:g}" for v in values)


class Search:
    """The two stages over the spec's methods, with `train` running each sweep."""

    def __init__(self, spec: dict, out: Path, train_overrides: list[str], experiment: str, train: Train) -> None:
        self.spec, self.out, self.extra, self.experiment, self.train = spec, out, train_overrides, experiment, train
        self.start = time.perf_counter()

    def sweep(self, where: Path, *overrides: str, experiment: bool = True) -> None:
        """One `gradbench train -m` into `where` (the experiment first, unless the overrides
        name it already, as best.overrides does; the user's overrides last, so they win)."""
        first = [f"+experiment={self.experiment}"] if experiment else []
        args = ["-m", *first, *overrides, "skip_done=true",
                f"hydra.sweep.dir={hydra_quote(str(where))}", *self.extra]
        status = self.train(args)
        if status not in (0, 1):  # 1: some jobs failed (recorded, reported); anything else: stop here
            raise SystemExit(status)
        if status == 1:
            say(f"some jobs under {where} failed (their summary.json says why); the search goes on")

    def grid(self, method: dict) -> dict[str, list[float]]:
        """Optimizer name → its rates for this method (the same factors for every method)."""
        out = {}
        for name, opt in self.spec["optimizers"].items():
            centre = method.get("adam", self.spec.get("adam_centre", 1e-3)) if "scale" not in opt \
                else method["sgd"] * opt["scale"]
            out[name] = rates(centre, self.spec["factors"])
        return out

    def trials(self, method_dir: Path) -> list[dict]:
        """Every finished trial under a method's dir: optimizer, rate, layout, value, run."""
        runs, _, _ = find_runs(method_dir) if method_dir.is_dir() else ([], [], {})
        rows = []
        for run in runs:
            opt = run.path.parent.name
            value = run_values(run, None).get(self.spec["select"], math.nan) if run.ok else math.nan
            rows.append({"optimizer": opt.removesuffix("-extended"), "extension": opt.endswith("-extended"),
                         "lr": float(run.overrides.get("optimizer.lr", "nan")),
                         "layout": run.overrides.get("model.local_groups", ""), "value": value,
                         "stop_reason": run.summary.get("stop_reason", ""), "run": run})
        return rows

    def search(self, name: str, method: dict, k: int, n: int) -> dict:
        """Stage 1 for one method; returns its line of search.md."""
        where = self.out / "search" / name
        base = [*method["overrides"], f"seed={self.spec['seed']}", f"max_steps={self.spec['steps']}"]
        layouts = [f"model.local_groups={text(self.spec['layouts'])}"] if method.get("local") else []
        grids = self.grid(method)
        for opt, lrs in grids.items():
            say(f"[search {k}/{n}, {self.elapsed()}] {name}: {opt} at rates {text(lrs)}"
                + (f" × head layouts {text(self.spec['layouts'])}" if layouts else ""))
            self.sweep(where / opt, *base, *self.spec["optimizers"][opt]["overrides"], f"optimizer.lr={text(lrs)}",
                       *layouts)
        edge = ""
        scored = [t for t in self.trials(where) if not t["extension"] and math.isfinite(t["value"])]
        if scored:
            best = max(scored, key=lambda t: t["value"])  # the first of equals: run order
            lrs = grids[best["optimizer"]]
            beyond = (min(lrs) / self.spec["extend_by"] if best["lr"] == min(lrs) else
                      max(lrs) * self.spec["extend_by"] if best["lr"] == max(lrs) else None)
            if beyond is not None:
                beyond = float(f"{beyond:.3g}")
                say(f"[search {k}/{n}] {name}: the best rate {best['lr']:g} ({best['optimizer']}) is on its grid's "
                    f"edge: one more rate, {beyond:g}")
                layout = [f"model.local_groups={best['layout']}"] if best["layout"] else []
                self.sweep(where / f"{best['optimizer']}-extended", *base,
                           *self.spec["optimizers"][best["optimizer"]]["overrides"], f"optimizer.lr={beyond:g}", *layout)
                edge = f"extended {best['lr']:g} → {beyond:g}"
        return self.choose(name, where, edge)

    def choose(self, name: str, where: Path, edge: str) -> dict:
        """`gradbench report` on the method's trials: its table and best.overrides; the line of search.md."""
        from gradbench.commands.report import main as report

        with contextlib.redirect_stdout(io.StringIO()):
            status = report([str(where), "--select", self.spec["select"], "--no-plots"])
        trials = self.trials(where)
        row = {"method": name, "trials": len(trials), "diverged": sum(not t["run"].ok for t in trials),
               "value": math.nan, "edge": edge, "skipped": ""}
        chosen = chosen_overrides(where) if status == 0 else None
        for t in trials:
            t["chosen"] = chosen is not None and same_trial(t["run"].lines, chosen)
            if t["chosen"]:
                row.update(optimizer=t["optimizer"], lr=t["lr"], layout=t["layout"], value=t["value"])
                if t["extension"]:
                    row["edge"] += "; still on the edge"
        self.all_trials += [{"method": name, **{k: v for k, v in t.items() if k != "run"},
                             "path": str(t["run"].path)} for t in trials]
        return row

    def elapsed(self) -> str:
        return f"{(time.perf_counter() - self.start) / 60:.1f} min"

    def run(self, methods: list[str] | None, search_only: bool) -> int:
        self.all_trials: list[dict] = []
        lines, todo = {}, {}  # search.md's lines in the method list's order
        for name, method in self.spec["methods"].items():
            if methods and name not in methods:
                continue
            if why := missing_option(method["overrides"]):
                say(f"skipped {name}: {why} (the method list names it; it runs once that option exists)")
                lines[name] = {"method": name, "skipped": why}
            else:
                lines[name], todo[name] = None, method
        (self.out / "search").mkdir(parents=True, exist_ok=True)
        for k, (name, method) in enumerate(todo.items(), 1):
            lines[name] = self.search(name, method, k, len(todo))
        lines = list(lines.values())
        write_trials(self.all_trials, self.out / "search", self.spec["select"])
        say("\n" + write_methods(lines, self.out / "search", self.spec["select"], self.spec["steps"]))
        if not search_only:
            self.long([r for r in lines if not r["skipped"]])
        say(f"done in {self.elapsed()} → {self.out}")
        return 0

    def long(self, lines: list[dict]) -> None:
        """Stage 2: the best methods, each at its chosen setting, for long.steps on long.seeds."""
        spec = self.spec["long"]
        ranked = [r["method"] for r in sorted(lines, key=lambda r: -r["value"]) if math.isfinite(r["value"])]
        chosen = ranked[:spec["top"]]
        if spec["baseline"] in ranked and spec["baseline"] not in chosen:
            chosen = [*ranked[:spec["top"] - 1], spec["baseline"]]
        say(f"[long] the best {len(chosen)} by the search: {', '.join(chosen)}; {spec['steps']} steps on seeds "
            f"{text(spec['seeds'])} with {' '.join(spec['overrides'])}")
        (self.out / "long").mkdir(parents=True, exist_ok=True)
        (self.out / "long" / "methods.txt").write_text("".join(f"{m}\n" for m in chosen))
        for k, name in enumerate(chosen, 1):
            best = self.out / "search" / name / "best.overrides"
            where = self.out / "long" / name
            if where.is_dir() and (where / "chosen").exists() and (where / "chosen").read_text() != best.read_text():
                moved = self.out / "replaced" / f"{name}-{int(time.time())}"
                moved.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(where), str(moved))
                say(f"{name}: the search now chooses another setting; the earlier long runs are in {moved}")
            where.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(best, where / "chosen")
            shown = [ln for ln in chosen_overrides(best.parent)  # the choice, without what every run shares
                     if ln not in self.extra and not ln.startswith(("+experiment=", "max_steps="))]
            say(f"[long {k}/{len(chosen)}, {self.elapsed()}] {name}: {' '.join(shown)}")
            self.sweep(where, *chosen_overrides(best.parent), *spec["overrides"], f"max_steps={spec['steps']}",
                       f"seed={text(spec['seeds'])}", experiment=False)


def chosen_overrides(where: Path) -> list[str] | None:
    """best.overrides' lines as arguments: report writes each shell-quoted (for xargs and a shell),
    so each line is unquoted here, as xargs would (one argument a line)."""
    from gradbench.run import files

    path = where / "best.overrides"
    if not files.exists(path):
        return None
    return [shlex.split(line)[0] for line in files.read_text(path).splitlines() if line.strip()]


def same_trial(run_lines: list[str], chosen: list[str]) -> bool:
    """Whether a trial's saved overrides are the chosen ones (best.overrides leaves out the seed
    and result-neutral keys, so compare on the chosen lines' keys, and no key more)."""
    from gradbench.run.checkpoint import NEUTRAL

    def keyed(lines):
        return {ln.partition("=")[0].lstrip("+~"): ln.partition("=")[2] for ln in lines}

    ours = {k: v for k, v in keyed(run_lines).items()
            if k != "seed" and not k.startswith("hydra.") and k.split(".")[0] not in NEUTRAL}
    return ours == keyed(chosen)


def main(argv: list[str], train: Train = subprocess_train) -> int:
    """`gradbench search EXPERIMENT --out DIR [OVERRIDES]`; returns the exit status."""
    args = parser().parse_intermixed_args(argv)
    args.only = [m for m in (args.only or "").split(",") if m]
    train_overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("search.")]
    try:
        spec = load_spec(args.experiment, args.overrides)
        unknown = [m for m in args.only if m not in spec["methods"]]
        if unknown:
            raise ValueError(f"--only {','.join(unknown)}: not in the method list ({', '.join(spec['methods'])})")
    except Exception as e:  # a bad experiment, override or spec: one line, before any training
        print(f"gradbench search: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return Search(spec, args.out, train_overrides, args.experiment, train).run(args.only, args.search_only)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradbench search", description="The same optimizer × rate search for "
                                "every method of an experiment's `search:` block, then its best methods on more "
                                "seeds for longer (resumable: skip_done).")
    p.add_argument("experiment", help="a conf/experiment option with a `search:` block, e.g. backprop_free")
    p.add_argument("--out", type=Path, required=True, help="where search/ and long/ go")
    p.add_argument("--only", metavar="M1,M2", help="only these methods (comma-separated names; the search tables then list only them)")
    p.add_argument("--search-only", action="store_true", help="stage 1 only (no long stage)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="search.* changes the search; every other override goes to each training run")
    return p
