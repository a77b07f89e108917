"""The commands: what `gradbench <command>` runs, one module each (the entry point, gradbench.cli,
imports a command's module only when that command runs, so `--help` stays instant).

    train.py             `gradbench train` / `data`: one run from a config, then the run dir's files
    check.py             `gradbench check`: every estimator against autograd, with its theory
    bench.py             `gradbench bench`: the step's time and peak memory, estimators side by side
    bench_report.py      `gradbench bench-report`: bench.csv files as tables and figures
    variance.py          `gradbench variance`: each estimator's error against its theory as the net grows
    evaluate.py          `gradbench eval`: a trained model on a split, again
    report.py            `gradbench report`: a sweep's runs as tables, figures and the best group
    functions_report.py  `gradbench functions`: test-function runs as paths over contours
    arguments.py         the plain commands' options (argparse, standard library only: instant --help)
    search.py            `gradbench search`: one optimizer × rate search for every method, then the best longer

A command may use everything below it (present/, run/, the estimators, models and data); nothing
below imports a command.
"""
