"""gradbench as users get it: a wheel built from this tree, installed non-editable (slow: builds
and runs the installed CLI from a directory that knows nothing of the repository)."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def expected_files() -> set[str]:
    """What the wheel must hold: every module of gradbench/ and every config of conf/ (mapped to
    gradbench/conf/), except a machine's own conf/local/ settings."""
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "gradbench").rglob("*.py")}
    configs = {"gradbench/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")
               if p.relative_to(REPO / "conf").parts[0] != "local"}
    return modules | configs


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target dir, env) of `pip install --no-deps --target` from a freshly built wheel."""
    root = tmp_path_factory.mktemp("package")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(root / "wheel"), str(REPO)],
                           capture_output=True, text=True, timeout=600, cwd=root)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "Warning" not in build.stdout + build.stderr, build.stderr  # e.g. an unnamed config folder
    (wheel,) = (root / "wheel").glob("gradbench-*.whl")
    names = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("gradbench-")}
    assert names == expected_files()
    target = root / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    # The test's own interpreter has the dependencies (and an editable gradbench, which the
    # target shadows: PYTHONPATH comes before site-packages and the editable finder).
    env = {**os.environ, "PYTHONPATH": str(target), "GRADBENCH_DATA": str(root / "data")}
    return target, env


def gradbench(installed, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    target, env = installed
    result = subprocess.run([str(target / "bin" / "gradbench"), *args], capture_output=True, text=True,
                            timeout=600, cwd=cwd, env=env)
    assert result.returncode == 0, f"gradbench {' '.join(args)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_installed_wheel_runs_every_command_from_anywhere(installed, tmp_path):
    target, env = installed
    where = subprocess.run([sys.executable, "-c", "import gradbench.cli as c; print(c.__file__); print(c.CONF)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env).stdout.split()
    assert where == [str(target / "gradbench" / "cli.py"), str(target / "gradbench" / "conf")]

    estimators = ", ".join(sorted(p.stem for p in (REPO / "conf" / "estimator").glob("*.yaml")))
    assert f"estimator: {estimators}\n" in gradbench(installed, tmp_path, "train", "--help").stdout  # the packaged configs
    gradbench(installed, tmp_path, "train", "max_steps=2", "device=cpu", "threads=1")
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*")
    assert json.loads((run / "summary.json").read_text())["stop_reason"] == "max_steps"
    assert "forward" in gradbench(installed, tmp_path, "check", "device=cpu").stdout
    gradbench(installed, tmp_path, "bench", "device=cpu", "bench.rounds=1", "bench.steps=2",
              "hydra.run.dir=bench")
    assert (tmp_path / "bench" / "bench.csv").is_file()
    gradbench(installed, tmp_path, "train", "-m", "estimator=forward,backward", "max_steps=2", "device=cpu",
              "threads=1", "plot=false", "hydra.sweep.dir=sweep")
    out = gradbench(installed, tmp_path, "report", "sweep").stdout
    assert "forward" in out and "backward" in out and (tmp_path / "sweep" / "table.csv").is_file()


@pytest.mark.slow
def test_a_user_config_dir_adds_options_to_the_installed_ones(installed, tmp_path):
    mine = tmp_path / "my_conf" / "model"
    mine.mkdir(parents=True)
    (mine / "wide.yaml").write_text("defaults:\n  - mlp\n  - _self_\nhidden: [64, 64]\n")
    gradbench(installed, tmp_path, "train", "--config-dir", str(tmp_path / "my_conf"), "model=wide",
              "max_steps=2", "device=cpu", "threads=1", "plot=false", "hydra.run.dir=run")
    config = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert config["model"]["hidden"] == [64, 64] and config["model"]["_target_"] == "gradbench.models.MLP"
