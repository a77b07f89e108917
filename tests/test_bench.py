"""`gradbench bench` and `bench-report`: estimators timed side by side, R = step / loss
evaluation, peak memory per step; no speed is asserted, memory (deterministic) is."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_dirs
from gradbench.commands.bench import peak_memory_mb
from gradbench.cli import main
from image_fixtures import write_mnist

CONF = Path(__file__).resolve().parent.parent / "conf"
BENCHMARKS = sorted((CONF / "benchmark").glob("*.yaml"))
OPTIONS = {p.stem for p in (CONF / "estimator").glob("*.yaml")}
TINY = ["bench.rounds=1", "bench.steps=2", "log_every_s=1000"]


def test_bench_times_every_estimator_at_every_batch_size(runner, capsys):
    runner("bench", "bench.estimators=[backward,forward,manual]", "bench.batch_sizes=[8,null]",
           "bench.rounds=2", "bench.steps=3")
    (run,) = run_dirs(runner.cwd)
    table = pd.read_csv(run / "bench.csv")
    assert list(table["estimator"]) == ["backward", "forward", "manual"] * 2
    assert list(table["batch_size"]) == [8] * 3 + [204] * 3  # null = the whole training split
    assert (table["median_step_s"] > 0).all() and (table["iqr_step_s"] >= 0).all()
    assert list(table.loc[table["estimator"] == "backward", "ratio"]) == [1.0, 1.0]
    assert (table["R"] - table["median_step_s"] / table["loss_eval_s"]).abs().max() < 1e-12
    assert (table["peak_memory_mb"] > 0).all()  # on the CPU too, from the profiler
    # the denominator: one forward-only evaluation of the same batch, one per batch size
    assert (table["eval_memory_mb"] > 0).all() and table.groupby("batch_size")["eval_memory_mb"].nunique().eq(1).all()
    assert (table["memory_ratio"] - table["peak_memory_mb"] / table["eval_memory_mb"]).abs().max() < 1e-12
    assert (table["threads"] == torch.get_num_threads()).all() and (table["device"] == "cpu").all()
    out = capsys.readouterr().out
    assert "ratio = median / backward's median" in out and f"→ {run / 'bench.csv'}" in out


def test_bench_names_the_estimators_it_knows(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("bench", "bench.estimators=[backward,nonexistent]")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bench.estimators must be options of conf/estimator or bench.extra" in err and "['nonexistent']" in err


def test_peak_memory_counts_what_one_step_holds_at_once():
    """Two float32 buffers of 4 MiB and 2 MiB alive together, then freed: a 6 MiB peak (plus
    the two scalar sums: a few bytes)."""
    def step():
        a, b = torch.ones(2**20), torch.ones(2**19)
        return a.sum() + b.sum()

    assert peak_memory_mb(step, torch.device("cpu")) == pytest.approx(6.0, abs=1e-3)


def test_rank1_forward_memory_stays_flat_with_depth_while_backprop_grows(runner):
    """MLP of width 256, 2 then 8 hidden layers, batch 64: backprop keeps every activation and
    a full gradient (4 × more weights, > 2.5 × the memory); the fused rank-1 forward gradient
    keeps one layer's activations and the factored estimate (< 1.5 ×)."""
    peaks = {}
    for depth in (2, 8):
        runner("bench", f"model.hidden=[{','.join(['256'] * depth)}]", "bench.batch_sizes=[64]",
               "bench.estimators=[backward,forward_rank1]", *TINY)
        table = pd.read_csv(run_dirs(runner.cwd)[-1] / "bench.csv").set_index("estimator")
        peaks[depth] = table["peak_memory_mb"]
    growth = peaks[8] / peaks[2]
    assert growth["backward"] > 2.5 and growth["forward_rank1"] < 1.5, growth.to_dict()


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=600, n_test=120, seed=0)  # enough for report 000's 500 / 100
    return root


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_every_benchmark_preset_runs_and_reports(runner, monkeypatch, mnist_root, path, capsys):
    """Each conf/benchmark option on small files in MNIST's format, batch 8; a preset that is a
    sweep (hydra.sweeper.params) runs as one with two small widths, then `bench-report` draws
    its scaling curve. A preset may name estimators another branch adds (backprop_free names
    issue 22's zeroth-order and local-guess options): those, and only those, not in
    conf/estimator nor the preset's bench.extra are left out here until they exist."""
    monkeypatch.setenv("GRADBENCH_DATA", str(mnist_root))
    preset = OmegaConf.load(path)
    sweep = OmegaConf.select(preset, "hydra.sweeper.params") is not None
    small = ["bench.batch_sizes=[8]", *TINY]
    if {"override /dataset": "mnist"} in preset.defaults:
        small.append("dataset.val_size=10")
    if {"override /model": "cnn_paper"} in preset.defaults:
        small.append("model.channels=[4,4,4,4]")  # narrowed to stay quick
    present = [e for e in preset.bench.estimators if e in OPTIONS or e in preset.bench.get("extra", {})]
    if present != list(preset.bench.estimators):
        small.append(f"bench.estimators=[{','.join(present)}]")
        small += [f"~bench.models.{e}" for e in preset.bench.get("models", {}) if e not in present]
    if sweep:  # the two small widths: one local-loss group per block
        small += [f"bench.models.{e}.local_groups=1" for e, m in preset.bench.get("models", {}).items()
                  if e in present and "local_groups" in m]
    out = runner.cwd / "bench"
    if sweep:
        runner("bench", "-m", f"+benchmark={path.stem}", "model.hidden=[8,8],[16,16]",
               f"hydra.sweep.dir={out}", *small)
    else:
        runner("bench", f"+benchmark={path.stem}", f"hydra.run.dir={out}", *small)
    table = pd.concat(pd.read_csv(p) for p in out.rglob("bench.csv"))
    assert set(table["estimator"]) == set(present)
    assert (table["memory_ratio"] - table["peak_memory_mb"] / table["eval_memory_mb"]).abs().max() < 1e-12
    if sweep:
        with pytest.raises(SystemExit) as exit_info:
            main(["bench-report", str(out), "--x", "num_params"])
        assert exit_info.value.code == 0
        assert (out / "scaling_num_params.png").stat().st_size > 10_000
    if "paper_R" in preset.bench:
        assert table.set_index("estimator").loc["backward", "paper_R"] == preset.bench.paper_R.backward


def test_bench_report_refuses_an_axis_the_runs_do_not_vary(runner, capsys):
    runner("bench", "bench.batch_sizes=[8]", *TINY)
    (run,) = run_dirs(runner.cwd)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-report", str(run), "--x", "layers"])
    assert exit_info.value.code == 2
    assert "--x layers: the runs under" in capsys.readouterr().err


def test_bench_times_thread_counts_side_by_side_beside_a_background_process(runner):
    runner("bench", "model=logreg", "bench.estimators=[backward]", "bench.threads=[1,2,auto]", "bench.load=1",
           *TINY)
    (run,) = run_dirs(runner.cwd)
    table = pd.read_csv(run / "bench.csv")
    # auto picks 1 thread for penguins' logistic regression (its forward pass is ~5 kFLOP), so it is not timed twice
    assert list(table["threads"]) == [1, 2] and set(table["load"]) == {1} and set(table["auto_threads"]) == {1}
    assert (table["forward_flops"] == 2 * 204 * 4 * 3).all()  # batch × inputs × classes multiply-adds


def test_threads_auto_takes_one_thread_for_a_small_step_and_the_idle_cores_for_a_large_one(monkeypatch):
    from gradbench.run import threads

    monkeypatch.setattr(threads, "TORCH_DEFAULT", 4)
    cpu, cuda, large = torch.device("cpu"), torch.device("cuda"), lambda: threads.AUTO_MIN_FLOPS
    assert threads.choose(None, cpu, large) == 4 and threads.choose(3, cpu, large) == 3
    assert threads.choose("auto", cpu, lambda: threads.AUTO_MIN_FLOPS - 1) == 1
    for idle, expected in ((None, 4), (4.0, 4), (7.9, 4), (2.6, 3), (1.2, 1), (0.1, 1)):
        monkeypatch.setattr(threads, "idle_cores", lambda idle=idle: idle)
        assert threads.choose("auto", cpu, large) == expected, idle
    assert threads.choose("auto", cuda, lambda: 0) == 4  # the GPU does the work


def test_idle_cores_is_the_idle_share_of_the_cores(monkeypatch):
    """From two /proc/stat samples: idle jiffies gained / all jiffies gained × cores. Samples
    stated here, so both bounds are exact (the busy-process test below can only bound from
    above on a machine others share)."""
    from gradbench.run import threads

    samples = iter([(1000, 4000), (1150, 4200)])  # 150 of 200 jiffies idle
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.idle_cores(0) == pytest.approx(3.0)
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)  # no /proc/stat: unknown, not 0
    assert threads.idle_cores(0) is None


def test_idle_cores_sees_a_busy_process():
    """With one CPU-bound process beside it, at most cores − 1 (+ 0.3 for sampling noise) are idle."""
    import os
    import subprocess
    import sys
    import time

    from gradbench.run.threads import idle_cores

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        idle = idle_cores(0.3)
    finally:
        busy.kill()
        busy.wait()
    assert idle is not None and 0 <= idle <= os.cpu_count() - 1 + 0.3


def test_a_run_records_the_thread_count_auto_chose(runner, monkeypatch):
    from gradbench.run import threads

    monkeypatch.setattr(threads, "TORCH_DEFAULT", 2)  # as on a 2-core machine outside the tests
    monkeypatch.setattr(threads, "idle_cores", lambda: 2.0)  # and an idle one
    try:
        (small,) = runner("train", "model=logreg", "max_steps=2", "eval_every=1", "plot=false")
        monkeypatch.setattr(threads, "AUTO_MIN_FLOPS", 4896)  # logreg's full batch: now "large"
        (large,) = runner("train", "model=logreg", "max_steps=2", "eval_every=1", "plot=false", "seed=1")
        (given,) = runner("train", "model=logreg", "max_steps=2", "eval_every=1", "plot=false", "threads=1", "seed=2")
    finally:
        torch.set_num_threads(1)  # the tests' own setting (conftest)
    assert [json.loads((r / "summary.json").read_text())["threads"] for r in (small, large, given)] == [1, 2, 1]


def bench_run(root: Path, hidden: list[int], batches: list[int]) -> None:
    """A bench run dir by hand: bench.csv (two estimators) and the .hydra/ files Hydra writes."""
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text(json.dumps(
        {"model": {"hidden": hidden}, "dataset": {"_target_": "gradbench.data.images.mnist"}}))
    (root / ".hydra" / "hydra.yaml").write_text(json.dumps(
        {"hydra": {"runtime": {"choices": {"model": "mlp", "dataset": "mnist"}}}}))
    rows = [{"estimator": e, "batch_size": b, "device": "cpu", "threads": 2, "layers": len(hidden) + 1,
             "num_params": 1000 * len(hidden), "median_step_s": 0.01 * b / 64 * k, "iqr_step_s": 0.001,
             "peak_memory_mb": 10.0 * k} for b in batches for k, e in enumerate(("backward", "forward"), 1)]
    pd.DataFrame(rows).to_csv(root / "bench.csv", index=False)


def test_scaling_figures_say_the_model_the_batch_and_the_band(tmp_path):
    """Even in the paper style (no title), a line under the panels says what was timed: the
    model in words, the data, the batch size where it is not the axis, and what the band is;
    the legend names the estimators as the README's tables do."""
    from gradbench.commands.bench_report import draw, load
    from gradbench.present.figstyle import Look

    bench_run(tmp_path / "batch", [1024, 1024], [16, 64, 256])
    bench_run(tmp_path / "depth" / "0", [1024] * 2, [64])
    bench_run(tmp_path / "depth" / "1", [1024] * 16, [64])
    look = Look("paper", "page")
    with look.rc():
        batch = draw(load(tmp_path / "batch"), "batch_size", look)
        depth = draw(load(tmp_path / "depth"), "layers", look)
    text = batch._suptitle.get_text().replace("\n", " ")
    assert "MLP 784-1024-1024-10 on MNIST" in text and "band: interquartile range of the step times" in text
    assert "batch " not in text  # the batch size is the axis
    text = depth._suptitle.get_text().replace("\n", " ")
    assert "MLP 784-1024-1024-10 to 784-1024×16-10 on MNIST" in text and "batch 64" in text
    legends = [*batch.legends, *(ax.get_legend() for ax in batch.axes if ax.get_legend())]
    assert [t.get_text() for legend in legends for t in legend.get_texts()] == ["backprop", "FG-W dense"]
    for fig in (batch, depth):  # caption, legend and axes labels drawn where nothing else is
        renderer = fig.canvas.get_renderer()
        boxes = [fig._suptitle.get_window_extent(renderer),
                 *(legend.get_window_extent(renderer) for legend in fig.legends),
                 *(ax.xaxis.label.get_window_extent(renderer) for ax in fig.axes)]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
