"""README "Extending gradbench", run as it stands: its Python modules and YAML files written into
tmp_path under the paths their first line names, its commands run there as a user would run
them (the installed `gradbench`, PYTHONPATH as the guide sets it), so the guide cannot drift
from the code it describes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = str(Path(sys.executable).parent)


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.mark.slow  # ~45 s of CPU: six commands, each importing torch (make test-all runs it)
def test_the_extension_guide_runs_as_written(tmp_path):
    guide = blocks(section("Extending gradbench"))
    files = [(lang, body) for lang, body in guide if lang in ("python", "yaml")]
    commands = [body for lang, body in guide if lang == "bash"]
    assert len(files) == 4 and len(commands) == 1, "the guide shows two modules, two YAML files and one command block"
    for _, body in files:
        path = body.splitlines()[0].removeprefix("# ").strip()  # each file's first line names it
        assert re.fullmatch(r"my_(ext|conf)/[\w/]+\.(py|yaml)", path), path
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": ""}  # the guide sets PYTHONPATH itself; CPU: the numbers it quotes
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", commands[0]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr  # Hydra's log lines go to stdout, the report's last line to stderr

    run = tmp_path / "outputs" / "guide" / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["estimator"]["_target_"] == "my_ext.spsa.SPSA"
    assert summary["config"]["model"]["_target_"] == "my_ext.models.ResidualMLP"
    accuracy = summary["final"]["test"]["accuracy"]
    assert f"test accuracy of {accuracy:.3f} in 200 steps" in section("Extending gradbench").replace("\n", " ")
    assert f"accuracy {accuracy:.6g}" in out  # eval reproduces the run's final test metrics exactly
    check = next((tmp_path / "outputs" / "runs").glob("*/*/check.csv")).read_text()
    assert "spsa" in check and "check passed" in out
    rows = (tmp_path / "outputs" / "guide" / "variance" / "variance.csv").read_text().splitlines()
    column = rows[0].split(",").index("estimator")
    assert {row.split(",")[column] for row in rows[1:]} == {"spsa", "forward"}
    table = (tmp_path / "outputs" / "guide" / "sweep" / "table.md").read_text()
    assert "spsa" in table and "4 runs in 2 groups" in out

    # the guide's claim: without --config-dir, eval builds nothing of the user's and says so in one line
    refused = subprocess.run([f"{BIN}/gradbench", "eval", "outputs/guide/run"], cwd=tmp_path, capture_output=True,
                             text=True, env={**env, "PYTHONPATH": str(tmp_path)}, timeout=600)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--config-dir DIR" in refused.stderr
