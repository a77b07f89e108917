"""gradbench: compare how neural networks get their gradients.

Forward gradients (Baydin et al. 2022), backpropagation, hand-derived backprop and finite
differences, each paired with the classic update rules, trained under one Hydra config.
Run `gradbench --help`.

The tree is the plan; imports point down only (tests/test_architecture.py fails on a loop or an
upward import):

    cli.py          the entry point: `gradbench <command>`, lazy (help imports no torch)
    commands/       one module per command: train, check, bench, variance, eval, report, ...
    present/        figures, tables and display names, drawn from run-dir files
    run/            the run machinery: build, loop, checkpoint, run dir, sweep, threads
    estimators/     gradient estimators, one module per method (the seam: estimators/base.py)
    models/         models trained through a dict of parameters (the seam: models.Model)
    data/           datasets as device-resident tensors
    optim.py        the update rules torch.optim lacks (manual SGD, NAG, schedules)
    errors.py, columns.py, paths.py   ground floor: errors, every column's facts, the config dir
"""

__version__ = "0.1.0"
