"""The plain commands' options (report, bench-report, functions, eval), standard library only:
`gradbench <command> --help` prints them without importing torch, pandas or matplotlib (the
CLI builds the parser here; the command parses its arguments with the same parser).

`--config-dir DIR` (or `-cd DIR`) is one spelling on every command, as Hydra's commands take it:
the user's own config dir, whose options' `_target_`s a run dir may name (gradbench.run.targets).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gradbench.present.options import add_arguments

SPLITS = ("train", "val", "test")  # gradbench.columns.SPLITS (eval's split=)
AXES = {"batch_size": "batch size", "num_params": "parameters", "layers": "depth (weight layers)"}  # bench-report --x

EVAL_USAGE = ("usage: gradbench eval RUN_DIR [split=test|val|train] [predictions=true|false] [device=...] "
              "[--config-dir DIR]")
EVAL_HELP = """Rebuilds the data split and the model from the run's own resolved config (summary.json, else
.hydra/config.yaml), loads model.pt and evaluates it on one split: loss, accuracy, errors and
the confusion matrix, computed as training computed them (the same seed's split, dtype and
device), so the run's final test metrics come out exactly. `predictions=true` also writes
RUN_DIR/predictions_<split>.csv: index in the split, label, prediction, one logit per class.
`--config-dir DIR`: the config dir the run was trained with (a model or estimator of your own)."""


def add_config_dir(parser: argparse.ArgumentParser, builds: bool = True) -> None:
    """--config-dir / -cd; `builds`: the command builds models from the runs' configs (else it
    only reads them, and takes the flag so that one command line's flags work on every command)."""
    parser.add_argument("--config-dir", "-cd", dest="config_dir", metavar="DIR",
                        help="your own config dir, as given to `gradbench train --config-dir DIR`: " + (
                            "the classes its options name may be built from the runs' configs" if builds else
                            "accepted on every command; this one reads run dirs as data, so DIR changes nothing"))


def report() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradbench report", description="Aggregate the runs under DIR (a sweep dir or any parent) "
        "into table.csv/table.md, overlay plots and the best group; a group = one resolved config, all its seeds.")
    p.add_argument("dir", type=Path, metavar="DIR", help="a multirun dir, or any folder above run dirs")
    p.add_argument("--out", type=Path, help="where to write the outputs (default: DIR)")
    p.add_argument("--ignore", nargs="+", action="extend", default=[], metavar="KEY",
                   help="override keys left out of the grouping, like seed (e.g. device)")
    p.add_argument("--target-loss", type=float, metavar="X",
                   help="steps and train time until train_loss < X (default: runs that stopped on stop_below)")
    p.add_argument("--target-accuracy", type=float, metavar="X",
                   help="steps and train time until val_accuracy >= X (instead of --target-loss)")
    p.add_argument("--select", metavar="METRIC", help="pick the best group by this metric's mean, in its "
                   "direction (gradbench/columns.py: accuracy and cosines max, the rest min; default "
                   "val_accuracy, else val_loss, else train_loss)")
    p.add_argument("--best-per", metavar="KEY", help="also table_best.*: the best group (by --select) "
                   "for each value of KEY, a group choice or override key such as estimator")
    p.add_argument("--reference", type=Path, metavar="FILE.yaml",
                   help="a report's numbers to show beside ours (default: `reference` in the runs' config)")
    p.add_argument("--baseline", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="also paired.md/.csv: each group against the one group with these values (e.g. "
                   "estimator=backward), paired seed by seed: mean difference and ratio with 95%% t-CIs")
    p.add_argument("--no-plots", action="store_true", help="tables only (no figures)")
    add_arguments(p)
    add_config_dir(p, builds=False)
    return p


def bench_report() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradbench bench-report", description="every bench.csv under DIR as "
                                "one table, and scaling curves or the thread-count table.")
    p.add_argument("dir", type=Path, help="a bench run dir or a sweep of them")
    p.add_argument("--x", choices=list(AXES), help="draw step time and memory against this column")
    p.add_argument("--threads", action="store_true",
                   help="also threads.md: step time per thread count and load, and what threads=auto picks")
    p.add_argument("--out", type=Path, help="where bench.md and the plot go (default: DIR)")
    add_arguments(p)
    add_config_dir(p, builds=False)
    return p


def functions() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradbench functions", description="test-function runs "
                                "(gradbench.models.functions) as figures.")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path)
    add_arguments(p)
    add_config_dir(p)
    return p


def eval_config_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """`gradbench eval`'s arguments without `--config-dir DIR` (`-cd DIR`, `--config-dir=DIR`,
    and the older `config_dir=DIR`), and DIR (None if not given)."""
    rest, found, args = [], None, iter(argv)
    for arg in args:
        if arg in ("--config-dir", "-cd"):
            found = next(args, None)
            if found is None:
                raise ValueError(f"{arg} needs a directory: {arg} DIR")
        elif arg.startswith("--config-dir=") or arg.startswith("config_dir="):
            found = arg.partition("=")[2]
        else:
            rest.append(arg)
    return rest, found


PARSERS = {"report": report, "bench-report": bench_report, "functions": functions}


def print_help(command: str) -> None:
    """`gradbench <command> --help` for a plain command."""
    if command == "eval":
        print(EVAL_USAGE + "\n\n" + EVAL_HELP)
    else:
        PARSERS[command]().print_help()
