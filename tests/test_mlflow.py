"""`logger=mlflow` (gradbench/run/tracker.py), read back with MLflow's own client: a run in the
local store, a sweep's jobs under one parent run, an unreachable server refused before any
work, and (slow) a real `mlflow server` on a free loopback port."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import load_run, run_dirs

pytest.importorskip("mlflow")  # the dev extra has it (pyproject.toml): `make test` runs these
from mlflow.tracking import MlflowClient  # noqa: E402

RUN = ["device=cpu", "eval_every=5", "log_every_s=1000"]


def local_client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")


def runs_of(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("gradbench")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def free_port() -> int:
    """A loopback port nothing listens on (the OS picks it; closed again at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_mirrors_the_run_dir(client: MlflowClient, run, run_dir: Path) -> None:
    """The MLflow run holds what the run dir holds: overrides as params, each metrics.csv column
    as its step history (float32 → float64 exactly: MLflow stores doubles), the summary's
    figures, the artifacts."""
    frame, summary = load_run(run_dir)
    assert run.info.status == "FINISHED" and run.data.tags["gradbench.run_dir"] == str(run_dir.resolve())
    assert run.data.tags["stop_reason"] == summary["stop_reason"]
    params = {line.partition("=")[0].lstrip("+~"): line.partition("=")[2] for line in summary["overrides"]}
    assert run.data.params == params
    for column in frame.columns.drop("step"):
        expected = frame.dropna(subset=[column]).set_index("step")[column]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, column)}
        assert history == expected.to_dict(), column
    for split, values in summary["final"].items():
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                assert run.data.metrics[f"final_{split}_{name}"] == value
    assert run.data.metrics["run_steps"] == summary["steps"] and run.data.metrics["run_num_params"] == summary["num_params"]
    assert run.data.metrics["run_train_time_s"] == summary["train_time_s"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {o for o in summary["outputs"] if o.endswith(".png")}
    assert {"summary.json", "metrics.csv"} | figures <= artifacts
    local = client.download_artifacts(run.info.run_id, "summary.json", str(run_dir.parent))
    assert json.loads(Path(local).read_text()) == summary


def test_a_run_is_an_mlflow_run_in_the_local_store(runner):
    (run_dir,) = runner("train", "logger=mlflow", "max_steps=12", "optimizer.lr=0.05", *RUN)
    client = local_client(runner.cwd)
    (run,) = runs_of(client)
    assert_mirrors_the_run_dir(client, run, run_dir)
    assert any(name.endswith(".png") for name in json.loads((run_dir / "summary.json").read_text())["outputs"])
    assert not (runner.cwd / "mlruns").exists()  # artifacts beside the store: outputs/mlartifacts/
    assert (runner.cwd / "outputs" / "mlartifacts").is_dir()


def test_a_sweeps_jobs_nest_under_one_parent_run(runner):
    jobs = runner("train", "-m", "seed=0,1", "logger=mlflow", "max_steps=3", "plot=false", *RUN)
    client = local_client(runner.cwd)
    runs = runs_of(client)
    [parent] = [r for r in runs if r.data.tags.get("gradbench.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("gradbench.kind") == "run"]
    assert len(runs) == 3 and parent.info.status == "FINISHED"
    assert parent.data.tags["gradbench.sweep_dir"] == str(jobs[0].parent.resolve())
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    by_dir = {r.data.tags["gradbench.run_dir"]: r for r in children}
    for job in jobs:
        assert_mirrors_the_run_dir(client, by_dir[str(job.resolve())], job)


@pytest.mark.parametrize("sweep", [False, True])
def test_an_unreachable_server_is_one_line_before_any_work(runner, capsys, sweep):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exit_info:
        runner("train", *(["-m", "seed=0,1"] if sweep else []), "logger=mlflow", f"logger.tracking_uri={uri}",
               "max_steps=3", *RUN)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"gradbench: error: logger.tracking_uri {uri} is unreachable (")
    assert run_dirs(runner.cwd) == [] and not (runner.cwd / "outputs" / "multirun").exists()


def test_a_tracking_uri_without_a_scheme_is_refused(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "logger=mlflow", "logger.tracking_uri=localhost:5000", "max_steps=3", *RUN)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("gradbench: error: logger.tracking_uri must be null (the local store) or a URI")


@pytest.mark.slow  # starts a real `mlflow server` (its start-up: ~10-60 s on a small machine)
def test_runs_reach_a_real_mlflow_server(runner, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server_artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # generous: the server imports and migrates its store first
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, f"mlflow server exited with {server.returncode}"
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 300 s"
            time.sleep(0.2)  # a poll interval, not a wait for the event
        (run_dir,) = runner("train", "logger=mlflow", f"logger.tracking_uri={uri}", "max_steps=6", *RUN)
        client = MlflowClient(uri)
        (run,) = runs_of(client)
        assert_mirrors_the_run_dir(client, run, run_dir)
        assert not (runner.cwd / "outputs" / "mlflow.db").exists()  # nothing in the local store
    finally:
        with_group = os.getpgid(server.pid) if server.poll() is None else None
        if with_group is not None:
            os.killpg(with_group, signal.SIGTERM)  # the server and its uvicorn workers
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=60)
