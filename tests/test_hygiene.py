"""The suite's own hygiene (tests/conftest.py): a test that leaves a process running fails, and
the process is killed; the `processes` fixture kills what a test started, whatever its outcome.

One small pytest session of its own (a subprocess, with this conftest, grace period 1 s) runs
the tests written here, and its verdicts are read back."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import processes_with

INNER = '''
import os
import subprocess


def test_leaves_a_child(processes):
    os.environ["{marker}"] = "1"
    subprocess.Popen(["sleep", "121"])


def test_leaves_an_orphan(processes):
    # its parent exits at once: re-parented to init, found by the session's mark
    os.environ["{marker}"] = "1"
    subprocess.run(["sh", "-c", "sleep 122 >/dev/null 2>&1 &"], check=True)


def test_fails_with_a_process_started_through_the_fixture(processes):
    os.environ["{marker}"] = "1"
    processes.start(["sh", "-c", "sleep 123 & sleep 123"])
    assert False, "failed on purpose"
'''


def test_a_leftover_process_fails_its_test_and_the_fixture_kills_what_it_started(tmp_path):
    marker = f"HYGIENE_{os.getpid()}_{tmp_path.name}"
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER.replace("{marker}", marker))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "test_inner.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GRADBENCH_TEST_GRACE_S": "1"})  # a leak is certain: no need to wait
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    for name, sleep in (("test_leaves_a_child", "sleep 121"), ("test_leaves_an_orphan", "sleep 122")):
        assert f"ERROR test_inner.py::{name}" in out, out[-3000:]
        assert f"test_inner.py::{name} left 1 process(es) running: " in out and sleep in out, out[-3000:]
    # the third test fails on its own assertion, and nothing of it is left: its group was killed
    assert "FAILED test_inner.py::test_fails_with_a_process_started_through_the_fixture" in out
    assert "test_fails_with_a_process_started_through_the_fixture left" not in out, out[-3000:]
    assert processes_with(marker) == {}  # the leftovers were killed, not left to the machine
