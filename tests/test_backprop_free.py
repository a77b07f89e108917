"""make backprop-free's stages at a tiny budget on penguins: every method listed searched (or
skipped, loudly, while its estimator does not exist), the edge extension, best.overrides, the
long stage on fresh seeds with the warm-up + cosine schedule, resuming, and the paired report.

The search runs its sweeps in this process (gradbench.cli.main), not one subprocess each: the
driver takes the trainer as an argument, and the subprocess one differs only in how it starts.
"""

import json
import math
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import GRADBENCH
from gradbench.cli import main as cli
from gradbench.commands import search
from gradbench.commands.report import main as report
from gradbench.optim import warmup_cosine
from gradbench.paths import CONF

TINY = ["dataset=penguins", "batch_size=16", "model.hidden=[32,32]", "hydra/launcher=basic", "device=cpu",
        "eval_every=2", "log_every_s=1000", "search.steps=4", "search.long.steps=6", "search.long.seeds=[1,2]"]
# `make test`: every method, but SGD alone at 2 rates (Hydra composes each job's config in ~1 s on
# 2 loaded cores; the whole grid, 3 optimizers × 3 rates, is the slow variant)
BUDGETS = {"sgd_only": ["~search.optimizers.momentum", "~search.optimizers.adam", "search.factors=[1.0,3.0]"],
           "full_grid": []}


def in_process(args: list[str]) -> int:
    try:
        cli(["train", *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_dirs(root: Path) -> set[Path]:
    return {p.parent for p in root.rglob("summary.json")}


def present(spec: dict) -> list[str]:
    """The methods whose options exist in this tree (the rest are issue 22's, skipped until they land)."""
    return [m for m, method in spec["methods"].items() if search.missing_option(method["overrides"]) is None]


@pytest.fixture(scope="module", params=["sgd_only", pytest.param("full_grid", marks=pytest.mark.slow)])
def searched(request, tmp_path_factory):
    """One search + long stage of every method, shared by the tests below: (its dir, the spec);
    sgd_only ~1.5 min on 2 loaded cores, full_grid ~5 min."""
    out = tmp_path_factory.mktemp("bpf") / "backprop_free"
    budget = [*TINY, *BUDGETS[request.param]]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out.parent)
        assert search.main(["backprop_free", "--out", str(out), *budget], train=in_process) == 0
    return out, search.load_spec("backprop_free", [o for o in budget if "search." in o]), budget


def test_every_listed_method_is_searched_or_skipped_with_its_reason(searched):
    searched, SPEC, _ = searched
    table = pd.read_csv(searched / "search" / "search.csv")
    assert list(table["method"]) == list(SPEC["methods"])  # every method listed, in the list's order
    for _, row in table.iterrows():
        missing = search.missing_option(SPEC["methods"][row["method"]]["overrides"])
        if missing:
            assert row["skipped"] == missing and math.isnan(row["trials"])
        else:
            assert pd.isna(row["skipped"]) and (searched / "search" / row["method"] / "best.overrides").exists()
    assert {"backprop", "l_bp", "fg_w_rank1", "fg_a", "lg_fg_a", "project_k8"} <= set(present(SPEC))


def test_the_same_grid_for_every_method_and_the_layouts_for_local_losses(searched):
    searched, SPEC, _ = searched
    trials = pd.read_csv(searched / "search" / "trials.csv")
    per_optimizer = len(SPEC["factors"])
    for method in present(SPEC):
        spec, mine = SPEC["methods"][method], trials[trials["method"] == method]
        grid = mine[~mine["extension"]]
        layouts = len(SPEC["layouts"]) if spec.get("local") else 1
        assert len(grid) == len(SPEC["optimizers"]) * per_optimizer * layouts, method
        assert sorted(set(grid["optimizer"])) == sorted(SPEC["optimizers"])
        sgd = sorted(grid[grid["optimizer"] == "sgd"]["lr"].unique())
        assert sgd == pytest.approx([spec["sgd"] * f for f in SPEC["factors"]], rel=2e-3)  # 3 significant digits
        if "momentum" in SPEC["optimizers"]:  # heavy ball at a tenth of SGD's rates
            momentum = sorted(grid[grid["optimizer"] == "momentum"]["lr"].unique())
            assert momentum == pytest.approx([0.1 * r for r in sgd], rel=2e-3)
        if spec.get("local"):
            assert sorted(grid["layout"].unique()) == sorted(SPEC["layouts"])
        assert mine["chosen"].sum() == 1, method  # exactly one trial is the choice


def test_a_best_rate_on_the_grid_edge_gets_one_more_rate(searched):
    """Recomputed from trials.csv: the grid's best (first of equals) on its optimizer's smallest or
    largest rate ⇒ one extension trial, a factor extend_by beyond that edge; else none."""
    searched, SPEC, _ = searched
    trials = pd.read_csv(searched / "search" / "trials.csv")
    methods = pd.read_csv(searched / "search" / "search.csv").set_index("method")
    for method in present(SPEC):
        mine = trials[trials["method"] == method]
        grid, extra = mine[~mine["extension"]], mine[mine["extension"]]
        scored = grid[grid["value"].notna()]
        best = scored.loc[scored["value"].idxmax()]
        lrs = grid[grid["optimizer"] == best["optimizer"]]["lr"]
        if best["lr"] in (lrs.min(), lrs.max()):
            beyond = best["lr"] / 3 if best["lr"] == lrs.min() else best["lr"] * 3
            assert len(extra) == 1 and extra["lr"].iloc[0] == pytest.approx(beyond, rel=2e-3), method
            assert extra["optimizer"].iloc[0] == best["optimizer"]
            assert str(methods.loc[method, "edge"]).startswith("extended"), method
        else:
            assert extra.empty and pd.isna(methods.loc[method, "edge"]), method


def test_the_choice_is_the_best_trial_and_best_overrides_train_it(searched):
    searched, SPEC, _ = searched
    trials = pd.read_csv(searched / "search" / "trials.csv")
    for method in present(SPEC):
        mine = trials[trials["method"] == method]
        chosen = mine[mine["chosen"]].iloc[0]
        assert chosen["value"] == mine["value"].max(), method
        lines = (searched / "search" / method / "best.overrides").read_text().splitlines()
        assert f"optimizer.lr={chosen['lr']:g}" in lines and not any(ln.startswith("seed=") for ln in lines)
        # Hydra saves a bool override as True: compare the method's own overrides case-blind
        assert {o.lower() for o in SPEC["methods"][method]["overrides"]} <= {ln.lower() for ln in lines}, method


def test_the_long_stage_trains_the_best_methods_on_fresh_seeds_with_one_schedule(searched):
    searched, _, _ = searched
    chosen = (searched / "long" / "methods.txt").read_text().split()
    table = pd.read_csv(searched / "search" / "search.csv").set_index("method")
    ranked = table["value"].dropna().sort_values(ascending=False, kind="stable").index.tolist()
    assert len(chosen) == 4 and "backprop" in chosen
    assert set(chosen) - {"backprop"} <= set(ranked[:4])
    for method in chosen:
        runs = sorted(run_dirs(searched / "long" / method))
        summaries = [json.loads((d / "summary.json").read_text()) for d in runs]
        assert sorted(s["seed"] for s in summaries) == [1, 2], method
        for s in summaries:
            assert s["choices"]["schedule"] == "warmup_cosine" and s["steps"] == 6
            assert s["config"]["optimizer"]["lr"] == pytest.approx(table.loc[method, "lr"])


def test_a_second_call_resumes_without_training_again(searched):
    searched, _, budget = searched
    before = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(searched)}
    choice = (searched / "search" / "backprop" / "best.overrides").read_text()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(searched.parent)
        assert search.main(["backprop_free", "--out", str(searched), "--only", "backprop", *budget],
                           train=in_process) == 0
    after = {d: (d / "summary.json").stat().st_mtime_ns for d in run_dirs(searched)}
    assert after == before  # every job skipped: skip_done
    assert (searched / "search" / "backprop" / "best.overrides").read_text() == choice


def test_the_paired_report_of_the_long_stage(searched):
    searched, _, _ = searched
    long = searched / "long"
    assert report([str(long), "--no-plots", "--select", "val_accuracy", "--target-accuracy", "0.5",
                   "--baseline", "estimator=backward", "model.local_losses=false"]) == 0
    paired = pd.read_csv(long / "paired.csv")
    assert paired["group"].nunique() == 3 and (paired[paired["metric"] == "test_accuracy"]["n"] == 2).all()


def test_bad_input_is_one_line_and_exit_2_before_any_training(tmp_path, capsys):
    def never(args):
        raise AssertionError("trained")

    for argv, why in ((["fg_family", "--out", str(tmp_path)], "no `search:` block"),
                      (["backprop_free", "--out", str(tmp_path), "--only", "nope"], "not in the method list"),
                      (["backprop_free", "--out", str(tmp_path), "search.factors=[0]"], "search.factors"),
                      (["no_such", "--out", str(tmp_path)], "no_such")):
        assert search.main(argv, train=never) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err, err


def test_warmup_cosine_rises_linearly_then_decays_to_final():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=2.0)
    schedule = warmup_cosine(opt, steps=100, warmup=0.1, final=0.0)
    seen = []
    for _ in range(102):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert seen[:10] == pytest.approx([2.0 * (i + 1) / 10 for i in range(10)])  # 10 warm-up steps to lr
    assert seen[10] == pytest.approx(2.0) and seen[55] == pytest.approx(1.0)  # cosine half-way: lr / 2
    assert seen[99] == pytest.approx(2.0 * (1 + math.cos(math.pi * 89 / 90)) / 2)
    assert seen[100] == seen[101] == 0.0
    assert all(a >= b for a, b in zip(seen[10:], seen[11:]))


def test_the_experiment_and_its_schedule_compose_and_the_makefile_runs_it():
    text = (Path(CONF).parent / "Makefile").read_text()
    assert re.search(r"^backprop-free: setup ## ", text, re.M)
    assert "gradbench search backprop_free" in text.replace("$(GRADBENCH)", "gradbench")
    assert (Path(CONF) / "schedule" / "warmup_cosine.yaml").exists()


@pytest.mark.slow
def test_the_cli_runs_each_sweep_as_its_own_gradbench_train_process(tmp_path):
    """`gradbench search` as a user runs it: each sweep a `python -m gradbench.cli train -m`
    subprocess (the default trainer). One method, SGD at one rate: always on the edge, so the
    extension runs too."""
    out = tmp_path / "bpf"
    result = subprocess.run([GRADBENCH, "search", "backprop_free", "--out", str(out), "--only", "backprop",
                             "--search-only", *TINY, "~search.optimizers.momentum", "~search.optimizers.adam",
                             "search.factors=[1.0]"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(out / "search" / "trials.csv")
    assert len(trials) == 2 and trials["extension"].sum() == 1 and trials["chosen"].sum() == 1
    assert "[search 1/1" in result.stderr and "skipped zo_rank1" not in result.stderr  # --only: no others
    assert not (out / "long").exists()
