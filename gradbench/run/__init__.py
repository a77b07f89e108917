"""The run machinery: from a composed config to a trained model and its files on disk.

    job.py         build a run: validate, device, seeded streams, instantiate the groups; read back a run dir
    validate.py    every run key and group option checked before any work
    train.py       the loop: batch → estimator → optimizer step, evaluation, stop rules, signals
    checkpoint.py  checkpoints, and the comparison of a stored config with a job's
    rundir.py      what a job may do with a run dir that holds a run: lock, verdict, roll back
    targets.py     the `_target_`s a config read back may name (a run dir is data, never code)
    files.py       every run-dir file read and written: regular files, capped, plain data, atomic writes
    metrics.py     metrics.csv, summary.json
    event_log.py   `logger=tensorboard`: event files beside metrics.csv
    tracker.py     `logger=mlflow`: an MLflow run per run dir, a parent run per sweep
    progress.py    progress bars for a run's steps and a sweep's jobs
    sweep.py       sweep callbacks, each job's outcome, the tally, workers that die with the sweep
    preflight.py   a sweep's jobs checked before the first starts
    threads.py     `threads: auto`: the CPU thread count for a run, and bench's background load

It builds on the estimators, models, data and optimizers, and never imports the presentation
(present/) or a command: figures are drawn from a run's files, by the commands.
"""
