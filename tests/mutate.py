"""Mutation check: plant each known bug in a copy of the tree and expect a non-slow test to fail.

    .venv/bin/python tests/mutate.py            # every mutation (a few minutes on 2 cores)
    .venv/bin/python tests/mutate.py fd l2      # only those whose name contains a word given

Not a pytest module (its name does not match test_*.py), and not part of `make test`: run it
(`make mutations`) before resolving an issue that touches the code or the tests below. Each
mutation is (name, file, exact old text, new text, the tests expected to catch it). The old text
must occur exactly once. The working tree is never edited: the tracked and untracked (not
ignored) files are copied to a temporary folder, the mutation is planted there, and the tests
run with that copy first on PYTHONPATH (the editable install's finder comes after sys.path, so
`import gradbench` and the `gradbench` script load the copy). First the selections run on the
unmutated copy (they must pass, else "caught" would mean nothing), then each mutation on a
fresh copy of the file. Exit status 1 if any mutation survives (or the baseline fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Mutation(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, run with -m "not slow"


VALIDATION = "tests/test_validation.py::test_bad_input_is_one_line_before_any_work_and_leaves_no_run_dir"
MUTATIONS = [
    Mutation("fga-l2-halved", "gradbench/estimators/activities.py",
             "grads[name] = grads[name] + 2 * model.l2 * p", "grads[name] = grads[name] + model.l2 * p",
             ("tests/test_activities.py::test_the_penalty_gradient_is_added_exactly",)),
    Mutation("rank1-sgd-ignores-weight-decay", "gradbench/optim.py",
             'g["momentum"] == 0 and g["weight_decay"] == 0 and not g["nesterov"]',
             'g["momentum"] == 0 and not g["nesterov"]',
             ("tests/test_tangents.py::test_an_optimizer_with_state_gets_the_dense_estimate",)),
    Mutation("path-traversal-guard-removed", "gradbench/run/targets.py",
             "if path.is_file() and path.is_relative_to(group.resolve()):", "if path.is_file():",
             ("tests/test_run_dir_safety.py::test_a_group_option_outside_the_config_dirs_is_refused",)),
    Mutation("best-group-among-failed", "gradbench/present/report_cells.py",
             'return rows[rows["failed"] == 0] if (rows["failed"] == 0).any() else rows', "return rows",
             ("tests/test_report.py::test_a_group_with_a_failed_run_is_not_best_while_a_complete_one_exists",)),
    Mutation("eval-chunk-rule-removed", "gradbench/run/validate.py",
             '    "eval_chunk": (lambda v, c: v >= 1, "must be >= 1"),\n', "",
             (f"{VALIDATION}[eval_chunk=0]",)),
    Mutation("max-epochs-rule-removed", "gradbench/run/validate.py",
             '    "max_epochs": (positive_or_null, "must be a positive integer or null"),\n', "",
             (f"{VALIDATION}[max_epochs=0]",)),
    Mutation("val-test-names-swapped", "gradbench/present/names.py",
             '"val": "validation", "test": "test"', '"val": "test", "test": "validation"',
             ("tests/test_names.py", "tests/test_plots.py::test_run_plots_say_what_ran_and_keep_one_colour_per_split")),
    Mutation("batch-loss-in-front", "gradbench/present/plots.py",
             'key=lambda c: split_of(c) != "batch"', 'key=lambda c: split_of(c) == "batch"',
             ("tests/test_plots.py::test_run_plots_say_what_ran_and_keep_one_colour_per_split",)),
    Mutation("idle-cores-zero", "gradbench/run/threads.py",
             "return (after[0] - before[0]) / busy_total * (os.cpu_count() or 1)", "return 0.0",
             ("tests/test_bench.py::test_idle_cores_is_the_idle_share_of_the_cores",)),
    Mutation("forward-forces-one-tangent", "gradbench/estimators/forward.py",
             "TangentSampler(params, self.structure, self.tangent, self.num_tangents,",
             "TangentSampler(params, self.structure, self.tangent, 1,",
             ("tests/test_images.py::test_cnn_with_four_tangents",)),
    Mutation("one-sided-finite-difference", "gradbench/estimators/finite_difference.py",
             "down[rows, idx] -= self.step", "pass",
             ("tests/test_manual.py",)),
    Mutation("optimizer-result-neutral", "gradbench/run/checkpoint.py",
             'NEUTRAL = ("resume", "skip_done",', 'NEUTRAL = ("optimizer", "resume", "skip_done",',
             ("tests/test_run_dir_safety.py::test_result_changing_keys_are_differences_and_neutral_ones_are_not",
              "tests/test_run_dir_safety.py::test_resuming_under_another_optimizer_is_refused")),
    Mutation("shared-lock", "gradbench/run/rundir.py",
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)",
             ("tests/test_run_dir_safety.py::test_the_lock_admits_one_holder",
              "tests/test_run_dir_safety.py::test_a_second_writer_is_refused_with_the_holders_pid")),
    # the per-coordinate bounds (tests/bounds.py) see a 2× bias that a bound on the norm cannot
    Mutation("forward-mean-doubled", "gradbench/estimators/tangents.py",
             "return d / len(d)", "return 2 * d / len(d)",
             ("tests/test_tangents.py::test_the_average_estimate_is_unbiased",)),
    Mutation("fga-doubled", "gradbench/estimators/activities.py",
             '.div_(k).view(layer.u.shape[1:])', '.div_(k / 2).view(layer.u.shape[1:])',
             ("tests/test_activities.py::test_the_average_estimate_is_unbiased",)),
]


def copy_tree(destination: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored) → destination."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    """(pytest's exit status, its last lines, seconds) for the selection in the copy."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # pytest and anything it started
        out, _ = process.communicate()
        return 124, out[-600:], time.monotonic() - start
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    return process.returncode, "\n".join(out.strip().splitlines()[-3:]), time.monotonic() - start


def main(words: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not words or any(w in m.name for w in words)]
    for m in chosen:
        count = (ROOT / m.file).read_text().count(m.old)
        if count != 1:
            print(f"{m.name}: the old text occurs {count} times in {m.file} (must be once): update the list")
            return 1
    with tempfile.TemporaryDirectory(prefix="gradbench-mutate-") as tmp:
        tree = Path(tmp) / "tree"
        copy_tree(tree)
        selection = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        status, tail, seconds = run_tests(tree, selection, timeout=1800)
        print(f"baseline (unmutated): pytest exit {status} in {seconds:.0f} s")
        if status != 0:
            print(tail)
            return 1
        survived = []
        for m in chosen:
            original = (tree / m.file).read_text()
            (tree / m.file).write_text(original.replace(m.old, m.new, 1))
            try:
                status, tail, seconds = run_tests(tree, m.tests, timeout=600)
            finally:
                (tree / m.file).write_text(original)
            # 1: tests failed (caught); 0: all passed (survived); else: an error, timeout or crash
            verdict = {0: "SURVIVED", 1: "caught"}.get(status, f"error (pytest exit {status})")
            print(f"{verdict:>10}  {m.name:34s} {seconds:5.0f} s  {m.file}")
            if status != 1:
                survived.append(m.name)
                print("            " + tail.replace("\n", "\n            "))
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations caught"
          + (f"; not caught: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
