"""`gradbench report DIR`: the runs of a sweep → one table row per group of seeds, plots, the best group.

    gradbench report outputs/multirun/<date>/<time> [--target-loss 0.3 | --target-accuracy 0.9] [--select val_loss]
                     [--best-per estimator] [--reference FILE.yaml] [--ignore KEY ...] [--out OUT]
                     [--baseline KEY=VALUE ...]
                     [--style paper] [--width column|page] [--format pdf svg png]

Groups are the runs' resolved configs minus the seed and result-neutral keys, labelled by their
overrides (in the figures: by gradbench.present.names); cells are mean ± 95% CI over the group's seeds
(gradbench.present.report_runs), clipped to the metric's range and shown as [lo, hi] where the t-interval
would leave it (gradbench.present.report_cells). Writes table.csv, table.md, best.md (the best group and the groups tied with
it), confusion.png, <metric>.png overlays (gradbench.present.report_plots; --format for PDF or SVG)
and, with --best-per, table_best.csv/.md; with --baseline, paired.md/.csv (each group against the
baseline group seed by seed: gradbench.present.paired); prints the tables.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from gradbench.commands import arguments
from gradbench.present import names, paired
from gradbench.run import files
from gradbench.columns import better, drawn
from gradbench.present.figstyle import look_of
from gradbench.present.report_cells import CI_NOTE, TIE_RULE, best_row, cell, fmt, interval, maximise, ties
from gradbench.present.report_runs import Run, aggregate, assign_groups, find_runs, group_of, metric_columns, resolved, \
    runs_frame, select


ALL_RUNS = "all runs"  # the one group's label where no key varies between groups


def varying(groups: list[dict[str, str]]) -> list[str]:
    """The override keys whose value differs between groups (a missing key counts as a value)."""
    keys = list(dict.fromkeys(k for g in groups for k in g))
    return [k for k in keys if len({g.get(k, "") for g in groups}) > 1]


def shown(table: pd.DataFrame) -> list[str]:
    """The metrics table.md shows: all but errors where the same split has accuracy (redundant)."""
    metrics = [c for c in table.columns if f"{c}_ci" in table]
    return [m for m in metrics if not (m.endswith("_errors") and m.replace("_errors", "_accuracy") in metrics)]


def markdown(table: pd.DataFrame, keys: list[str]) -> str:
    """A markdown table: group keys, run counts, then each metric with its `report` column beside it."""
    keys = keys or ["group"]
    columns = [*keys, "n", "failed", "stops"] + (["reached"] if "reached" in table else [])
    columns += ["tied"] if "tied" in table else []
    for metric in shown(table):
        columns += [metric] + ([f"report {metric}"] if f"report {metric}" in table else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = []
        for c in columns:
            if c == "reached":
                # out of every run: a diverged run did not reach the target either
                cells.append(f"{row['reached']}/{row['n']}")
            elif c in keys or c in ("n", "failed", "stops", "tied") or c.startswith("report "):
                cells.append(fmt(row[c]) if isinstance(row[c], float) else "" if row[c] is None else str(row[c]))
            else:
                cells.append(cell(row, c))
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_columns(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """table.csv: group keys, full override string, counts, then per metric mean, CI half-width,
    the clipped interval (lo, hi) and the report's value."""
    columns = [*keys, "group", "n", "ok", "failed", "status", "stops"] + (["reached"] if "reached" in table else [])
    columns += ["tied"] if "tied" in table else []
    for metric in [c for c in table.columns if f"{c}_ci" in table]:
        columns += [metric, f"{metric}_ci", f"{metric}_lo", f"{metric}_hi"]
        columns += [f"report {metric}"] if f"report {metric}" in table else []
    return columns


def _same(ours, theirs) -> bool:
    """A reference match value against a run's value: numerically if both are numbers, else as text."""
    if ours is None:
        return False
    try:
        return math.isclose(float(ours), float(theirs), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(ours).strip().lower() == str(theirs).strip().lower()


def load_reference(path: Path | None, runs: list[Run]) -> dict:
    """{source, rows} from --reference FILE.yaml, else merged from the runs' `reference` config key."""
    if path is not None:
        data = files.read_yaml(Path(path)) or {}
        data = data.get("reference", data)
        return {"source": data.get("source", str(path)), "rows": list(data.get("rows") or [])}
    sources, rows = [], []
    for run in runs:
        try:  # .hydra/config.yaml as plain data, never resolved; a broken one adds no reference
            data = select(run.config, "reference")
        except ValueError as e:
            note(f"{run.path}: no reference read ({e})")
            data = None
        data = data or select(resolved(run), "reference")
        if not isinstance(data, dict):
            continue
        if data.get("source") not in sources:
            sources.append(data.get("source"))
        rows += [r for r in data.get("rows") or [] if r not in rows]
    return {"source": ", ".join(str(s) for s in sources if s), "rows": rows}


def attach_reference(table: pd.DataFrame, first: dict[str, Run], reference: dict) -> list[dict]:
    """Add `report <metric>` columns in place for every group a reference row matches (the first
    matching row wins per metric); returns the reference rows that matched no group."""
    unmatched = []
    for ref in reference["rows"]:
        match = ref.get("match") or {}
        hits = [i for i, g in table["group"].items() if all(_same(first[g].lookup(k), v) for k, v in match.items())]
        if not hits:
            unmatched.append(ref)
        for metric, value in (ref.get("values") or {}).items():
            column = f"report {metric}"
            if column not in table:
                table[column] = None
            for i in hits:
                if pd.isna(table.at[i, column]):
                    table.at[i, column] = value
    return unmatched


def default_select(table: pd.DataFrame) -> str | None:
    return next((m for m in ("val_accuracy", "val_loss", "train_loss") if m in table and table[m].notna().any()), None)


def best_per(table: pd.DataFrame, first: dict[str, Run], key: str, metric: str) -> pd.DataFrame:
    """For each value of `key` (override, group choice or config key), its best group's row."""
    values = [first[g].lookup(key) for g in table["group"]]
    if all(v is None for v in values):
        raise ValueError(f"--best-per {key}: no run has it as an override, group choice or config key")
    table = table.assign(**{key: [str(v) for v in values]})
    rows, tied = [], []
    for _, part in table.groupby(key, sort=False):
        if (best := best_row(part, metric)) is not None:
            rows.append(best)
            tied.append("; ".join(part.loc[i, "group"] for i in ties(part, metric, best)))
    return table.loc[rows].assign(tied=tied)


def confusion(runs: list[Run]) -> np.ndarray | None:
    """The mean over seeds of the finished runs' test confusion matrices (rows true, columns predicted)."""
    mats = [r.summary["test_confusion"] for r in runs if r.ok and r.summary.get("test_confusion")]
    return np.mean(np.asarray(mats, dtype=float), axis=0) if mats else None


def class_names(runs: list[Run], k: int) -> list[str]:
    """The data's class names (summary.json), else the label numbers."""
    names = next((r.summary["class_names"] for r in runs if r.summary.get("class_names")), None)
    return [str(n) for n in names] if names and len(names) == k else [str(i) for i in range(k)]


def best_section(row: pd.Series, metric: str, runs: list[Run], matrix: np.ndarray | None,
                 tied: list[pd.Series] = ()) -> str:
    """best.md: the selected group, the groups tied with it, its selection metric and test
    metrics, its confusion matrix."""
    lines = [f"## Best group by {metric} ({'max' if maximise(metric) else 'min'}): {row['group']}", ""]
    if tied:
        lines += [f"**Tied with {len(tied)} other group(s)**, not distinguishable by these seeds ({TIE_RULE}):", ""]
        lines += [f"- {t['group']}: {metric} {cell(t, metric)}" for t in tied] + [""]
    else:
        lines += [f"No other group is tied with it ({TIE_RULE}).", ""]
    lines += [f"- {metric}: {cell(row, metric)} (runs: {row['stops']})"]
    lines += [f"- {m}: {cell(row, m)}" for m in row.index if m.startswith("test_") and not m.endswith("_ci")]
    if matrix is not None:
        n = sum(1 for r in runs if r.ok and r.summary.get("test_confusion"))
        names = class_names(runs, len(matrix))
        lines += ["", f"Test confusion matrix, mean over {n} seed(s) (rows: true class, columns: predicted):", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        lines += [f"| {name} | " + " | ".join(f"{v:.4g}" for v in row) + " |" for name, row in zip(names, matrix)]
        lines += ["", "![confusion matrix](confusion.png)"]
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> int:
    """Read the runs, write every output, print the tables."""
    # the tables read a few metrics.csv columns (run_values); the overlay figures those they draw
    table_columns = {"step", "train_time_s", "train_loss", "val_loss", "val_accuracy"}
    runs, skipped, broken = find_runs(args.dir, table_columns if args.no_plots else
                                      lambda c: c in table_columns or drawn(c))
    if skipped:
        note(f"skipped {len(skipped)} run dir(s) without summary.json (still running, killed, or not a train run)")
    for path, why in broken.items():
        note(f"skipped broken run dir {path}: {why}")
    if not runs:
        note(f"error: no finished run dirs (.hydra/overrides.yaml + summary.json) under {args.dir}")
        return 1
    ignore = tuple(k.lstrip("+~") for k in args.ignore)
    by_group = group_runs(runs, ignore)
    first = {g: members[0] for g, members in by_group.items()}
    keys = varying([group_of(first[g], ignore) for g in by_group])
    baseline = paired.find_baseline(first, paired.parse_baseline(args.baseline)) if args.baseline else None
    if args.target_loss is not None and args.target_accuracy is not None:
        raise ValueError("--target-loss and --target-accuracy: give one of them")
    target = (("train_loss", args.target_loss, "below") if args.target_loss is not None else
              ("val_accuracy", args.target_accuracy, "above") if args.target_accuracy is not None else None)
    frame = runs_frame(runs, ignore, target)
    table = aggregate(frame)
    for k in reversed(keys):  # the group keys that vary, as the table's first columns
        table.insert(0, k, [group_of(first[g], ignore).get(k, "") for g in table["group"]])
    reference = load_reference(args.reference, list(first.values()))
    for ref in attach_reference(table, first, reference):
        note(f"reference row matches no group: {ref.get('match')}")
    metric = args.select or default_select(table)
    selectable = [c for c in metric_columns(frame) if better(c)]
    if metric is not None and metric not in selectable:
        raise ValueError(f"--select {metric}: not a column with a direction; choose from {', '.join(selectable)}")

    out = Path(args.out or args.dir)
    out.mkdir(parents=True, exist_ok=True)
    short = {}
    for g in by_group:  # display names may coincide where raw values differ: keep every group apart
        name = display(first[g], keys)
        short[g] = name if name not in short.values() else f"{name} #{sum(v.startswith(name) for v in short.values()) + 1}"
    extra = failures(runs) + "".join(f"\n- broken run dir, left out: {p} ({why})" for p, why in broken.items())
    text = write_table(table, keys, out / "table", reference.get("source"), extra)
    if metric is not None and (i := best_row(table, metric)) is not None:
        group = table.at[i, "group"]
        tied = [table.loc[t] for t in ties(table, metric, i)]
        text += "\n" + write_best(table.loc[i], metric, by_group[group], short[group], out, args, tied)
    if args.best_per and metric is None:
        note(f"--best-per {args.best_per}: no metric to select on (no run finished)")
    elif args.best_per:
        best = best_per(table, first, args.best_per, metric)
        text += f"\n## Best group per {args.best_per} (by {metric})\n\n"
        text += write_table(best, [args.best_per, *(k for k in keys if k != args.best_per)],
                            out / "table_best", reference.get("source"))
    if baseline is not None:  # paired.md / paired.csv: each group against the baseline, seed by seed
        text += "\n" + paired.write(frame, baseline, metric_columns(frame), out, short)
    if not args.no_plots:
        from gradbench.present.report_plots import plot_overlays

        plot_overlays({short[g]: [(r.curve(), r.summary.get("stop_reason", "")) for r in rs]
                       for g, rs in by_group.items()}, out, look_of(args))
    print(text, end="")
    note(f"{len(runs)} runs in {len(by_group)} groups → {out}")
    return 0


def display(run: Run, keys: list[str]) -> str:
    """A group's label in the figures: the keys that vary between groups, in words (gradbench.present.names),
    each with this group's value (a key it does not override: its config value, unless the key
    belongs to a group option that varies too: "forward gradient (rank-1)" says its structure)."""
    values = {k: None if k not in run.overrides and k.split(".")[0] in keys else run.lookup(k) for k in keys}
    return names.label(values, run.choices, resolved(run), run.summary) if keys else ALL_RUNS


def group_runs(runs: list[Run], ignore: tuple[str, ...]) -> dict[str, list[Run]]:
    """Runs by group (same resolved config but the seed: report_runs.assign_groups), in
    first-seen order; says when a group holds a seed twice."""
    assign_groups(runs, ignore)
    by_group: dict[str, list[Run]] = {}
    for run in runs:
        by_group.setdefault(run.group, []).append(run)
    for g, members in by_group.items():  # several sweeps of one config under DIR, say
        if len(seeds := [r.overrides.get("seed", r.summary.get("seed")) for r in members]) > len(set(seeds)):
            note(f"group {g!r} holds the same seed more than once: {seeds}")
    return by_group


def note(text: str) -> None:
    print(f"gradbench report: {text}", file=sys.stderr)


def failures(runs: list[Run]) -> str:
    """Why runs failed: each distinct error's last line, how many runs, the first run dir."""
    errors: dict[str, list[Run]] = {}
    for run in runs:
        if run.summary.get("error"):
            errors.setdefault(str(run.summary["error"]).strip().splitlines()[-1], []).append(run)
    return "".join(f"\n- failed ×{len(rs)}: {e} (first: {rs[0].path})" for e, rs in errors.items())


def write_table(table: pd.DataFrame, keys: list[str], stem: Path, source: str | None, extra: str = "") -> str:
    """<stem>.csv and <stem>.md (the table, a note on the cells, then `extra`); returns the markdown."""
    ends = {f"{m}{end}": [interval(row, m)[k] for _, row in table.iterrows()]
            for m in [c for c in table.columns if f"{c}_ci" in table] for k, end in enumerate(("_lo", "_hi"))}
    out = table.assign(**ends)
    files.write_text(stem.with_suffix(".csv"), out[[c for c in csv_columns(out, keys) if c in out]].to_csv(index=False))
    text = markdown(table, keys) + f"\n{CI_NOTE}" + (f"; `report` columns: {source}" if source else "") + ".\n"
    text += extra + "\n" if extra else ""
    files.write_text(stem.with_suffix(".md"), text)
    return text


def write_best(row: pd.Series, metric: str, runs: list[Run], name: str, out: Path, args: argparse.Namespace,
               tied: list[pd.Series] = ()) -> str:
    """best.md and confusion.png (the mean test confusion over the group's seeds)."""
    matrix = confusion(runs)
    text = best_section(row, metric, runs, None if args.no_plots else matrix, tied)
    if matrix is not None and not args.no_plots:
        from gradbench.present.report_plots import plot_confusion

        n = sum(1 for r in runs if r.ok and r.summary.get("test_confusion"))
        plot_confusion(matrix, confusion_title(name, runs[0], n), out / "confusion", class_names(runs, len(matrix)),
                       look_of(args), "test examples" + (f" (mean over {n} seeds)" if n > 1 else ""))
    files.write_text(out / "best.md", text)
    try:
        files.write_text(out / "best.overrides", "".join(f"{shlex.quote(o)}\n" for o in rerun_overrides(runs[0])))
    except ValueError as e:  # UnsafeConfig: a line that must not be run again; no stale file either
        (out / "best.overrides").unlink(missing_ok=True)
        note(f"best.overrides not written: {e}")
    return text


def confusion_title(name: str, run: Run, seeds: int) -> str:
    """The best group's display name (as the overlays' legend names it; none when the report
    holds one group), what ran in words (the run title without its seed) and what is counted."""
    from gradbench.present.plots import run_title

    what = " · ".join(p for p in run_title(run.path, run.summary) if not p.startswith("seed "))
    return "\n".join([*([name] if name != ALL_RUNS else []), what, f"test set, mean over {seeds} seed(s)"])


def rerun_overrides(run: Run) -> list[str]:
    """The best group's overrides, without its seed and the keys that do not change a result,
    checked like stored overrides (gradbench.run.targets.check_overrides: no Hydra setting, no
    `_target_`, options of the config tree only; a run dir is data). best.overrides holds them
    shell-quoted, one per line: `xargs -a best.overrides gradbench train -m seed=1,2,3` (xargs
    removes the quotes) trains the group again on other seeds (make fg-family)."""
    from gradbench.run import targets
    from gradbench.run.checkpoint import NEUTRAL

    source = run.path / ".hydra" / "overrides.yaml"
    files.check_data(run.lines, source)  # no `${`: a line Hydra would resolve when the file is used
    targets.check_overrides(run.lines, str(source))
    keep = []
    for line in run.lines:
        key = line.partition("=")[0].lstrip("+~")
        if key != "seed" and key.split(".")[0] not in NEUTRAL and not key.startswith("hydra."):
            keep.append(line)
    return keep


def main(argv: list[str]) -> int:
    """`gradbench report DIR [options]`; returns the exit status."""
    args = parser().parse_args(argv)
    if not args.dir.is_dir():
        print(f"gradbench report: error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        return report(args)
    except ValueError as e:  # bad option values found only once the runs are read
        print(f"gradbench report: error: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    """The options (gradbench.commands.arguments: `--help` imports nothing heavy)."""
    return arguments.report()
