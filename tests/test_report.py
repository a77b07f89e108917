"""`gradbench report` on real small sweeps: grouping, mean ± t-based CI over seeds (clipped to a
metric's range), failed and diverged runs, steps to a loss target, the best group and its ties,
the best group per key, report columns, figures as PDF and SVG in the paper style."""

import json
import math
import shutil
import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import FAST, Runner
from gradbench.commands.report import best_section, main
from gradbench.present import names
from gradbench.present.report_cells import best_row, cell, interval, ties
from gradbench.present.report_runs import mean_ci, t975

# t_{0.975, df} from an independent source (scipy.stats.t.ppf), df → value
T_REFERENCE = {1: 12.706204736174707, 2: 4.302652729749464, 10: 2.2281388519649385,
               30: 2.0422724563012373, 31: 2.0395134463964077, 60: 2.0002978220142604, 1000: 1.9623390808264078}
QUIET = [*FAST, "save_model=false"]


def sweep(root: Path, *overrides: str, failing: bool = False) -> Path:
    """Run `gradbench train ... -m` in root; return the sweep dir. A sweep with failed jobs
    runs every job, then exits with status 1."""
    with pytest.MonkeyPatch.context() as mp:
        runner = Runner(root, mp)
        if not failing:
            runner("train", *overrides, *QUIET, "-m")
        else:
            # jobs that fail inside the sweep, recorded as failed runs: the pre-flight check that
            # refuses a sweep with an invalid job before it starts (gradbench.run.preflight) is
            # left out here, so the jobs fail as a job failing at run time does
            mp.setattr("gradbench.cli.checked_sweep", lambda rest: contextlib.nullcontext())
            with pytest.raises(SystemExit) as exit_info:
                runner("train", *overrides, *QUIET, "-m")
            assert exit_info.value.code == 1
    return sorted((root / "outputs" / "multirun").glob("*/*"))[-1]


@pytest.fixture(scope="module")
def logreg(tmp_path_factory) -> Path:
    """2 estimators × 3 learning rates (one invalid: every job fails) × 3 seeds, penguins, 20 steps."""
    return sweep(tmp_path_factory.mktemp("logreg"), "model=logreg", "max_steps=20", "estimator=forward,backward",
                 "optimizer.lr=0.03,0.3,-1", "seed=0,1,2", failing=True)


@pytest.fixture(scope="module")
def toynet(tmp_path_factory) -> Path:
    """No labels, no val split: loss only. lr 5 diverges within a few steps; lr 0.01 reaches
    stop_below=2 (the toy loss starts near 18)."""
    return sweep(tmp_path_factory.mktemp("toynet"), "model=toynet", "dataset=toy_inputs", "dataset.samples=50",
                 "max_steps=30", "stop_below=2.0", "optimizer.lr=0.01,5", "seed=0,1")


def report(sweep_dir: Path, *options: str, out: Path | None = None) -> Path:
    out = out or sweep_dir / "report"
    assert main([str(sweep_dir), "--out", str(out), *options]) == 0
    return out


def summaries(sweep_dir: Path) -> pd.DataFrame:
    """One row per job: estimator, lr, seed, stop reason and the final metrics, read by hand."""
    rows = []
    for path in sorted(sweep_dir.glob("*/summary.json")):
        lines = (path.parent / ".hydra/overrides.yaml").read_text().splitlines()
        overrides = dict(line.removeprefix("- ").split("=", 1) for line in lines)
        summary = json.loads(path.read_text())
        row = {**overrides, "stop_reason": summary["stop_reason"], "path": path.parent}
        row.update({f"{s}_{k}": v for s, ms in (summary.get("final") or {}).items() for k, v in ms.items()})
        row.update({k: summary.get(k) for k in ("steps", "train_time_s", "test_confusion")})
        rows.append(row)
    return pd.DataFrame(rows)


def by_hand(values) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    return x.mean(), T_REFERENCE[len(x) - 1] * x.std(ddof=1) / math.sqrt(len(x))


def test_t_quantile_matches_an_independent_table():
    for df, value in T_REFERENCE.items():
        assert t975(df) == pytest.approx(value, abs=2e-6)


def test_one_run_shows_its_value_without_a_ci():
    assert mean_ci([0.5, math.nan]) == (0.5, pytest.approx(math.nan, nan_ok=True), 1)
    row = pd.Series({"ok": 1, "status": "ok", "val_loss": 0.5, "val_loss_ci": math.nan})
    assert cell(row, "val_loss") == "0.5"
    assert cell(pd.Series({"ok": 3, "val_loss": 0.5, "val_loss_ci": 0.01234}), "val_loss") == "0.5 ± 0.012"


def test_one_row_per_group_with_mean_and_ci_over_seeds(logreg, capsys):
    out = report(logreg, "--no-plots")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    assert list(table.columns[:3]) == ["estimator", "optimizer.lr", "group"]  # only the keys that vary
    assert sorted(zip(table["estimator"], table["optimizer.lr"])) == sorted(
        (e, lr) for e in ("forward", "backward") for lr in ("0.03", "0.3", "-1"))
    assert (table["n"] == 3).all()
    runs = summaries(logreg)
    for _, row in table[table["optimizer.lr"] != "-1"].iterrows():
        mine = runs[(runs["estimator"] == row["estimator"]) & (runs["optimizer.lr"] == row["optimizer.lr"])]
        assert row["ok"] == 3 and row["failed"] == 0 and row["stops"] == "max_steps×3"
        for metric in ("val_accuracy", "test_loss", "train_time_s"):
            mean, ci = by_hand(mine[metric])
            assert row[metric] == pytest.approx(mean, rel=1e-12)
            assert row[f"{metric}_ci"] == pytest.approx(ci, rel=1e-6)  # the t table has 10 digits
    printed = capsys.readouterr().out
    assert printed.startswith("| estimator | optimizer.lr | n | failed |")
    assert printed.count(" ± ") > 10 and (out / "table.md").read_text() in printed


def test_failed_jobs_are_counted_and_shown_as_failed(logreg):
    out = report(logreg, "--no-plots")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    failed = table[table["optimizer.lr"] == "-1"]
    assert len(failed) == 2 and (failed["failed"] == 3).all() and (failed["ok"] == 0).all()
    assert (failed["status"] == "failed").all() and failed["val_accuracy"].isna().all()
    rows = [line for line in (out / "table.md").read_text().splitlines() if "| -1 |" in line]
    assert len(rows) == 2 and all(line.count("| failed ") >= 10 for line in rows)
    assert "- failed ×6: ConfigError: optimizer.lr must be a finite number > 0, got -1" in (out / "table.md").read_text()


def test_diverged_runs_and_a_loss_only_model_without_val_split(toynet):
    out = report(toynet)
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str}).set_index("optimizer.lr")
    assert table.at["5", "status"] == "diverged" and table.at["5", "failed"] == 2
    assert not any(c.startswith(("val_", "test_", "best_")) for c in table.columns)
    runs = summaries(toynet)
    fine = runs[runs["optimizer.lr"] == "0.01"]
    assert (fine["stop_reason"] == "threshold").all()  # stop_below fired: the run's end is the target
    assert table.at["0.01", "reached"] == 2
    assert table.at["0.01", "steps_to_target"] == pytest.approx(fine["steps"].mean())
    assert "train_loss (min)" in (out / "best.md").read_text()  # no val split: select on train loss
    assert (out / "train_loss.png").exists() and not (out / "confusion.png").exists()


def test_steps_and_time_to_a_target_loss(logreg):
    out = report(logreg, "--no-plots", "--target-loss", "0.7")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    runs = summaries(logreg)
    for _, row in table[table["optimizer.lr"] != "-1"].iterrows():
        mine = runs[(runs["estimator"] == row["estimator"]) & (runs["optimizer.lr"] == row["optimizer.lr"])]
        hits = []
        for path in mine["path"]:
            metrics = pd.read_csv(path / "metrics.csv")
            below = metrics[metrics["train_loss"] < 0.7]
            if len(below):
                hits.append(below.iloc[0][["step", "train_time_s"]])
        assert row["reached"] == len(hits)
        if hits:
            assert row["steps_to_target"] == pytest.approx(np.mean([h["step"] for h in hits]))
            assert row["time_to_target_s"] == pytest.approx(np.mean([h["train_time_s"] for h in hits]))
    assert 0 < table["reached"].sum() < 12  # the fast rate reaches it within 20 steps, the slow one not


def test_select_picks_the_best_group_and_draws_its_confusion_matrix(logreg):
    out = report(logreg, "--select", "val_loss")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    best = table.loc[table["val_loss"].idxmin()]
    text = (out / "best.md").read_text()
    assert text.startswith(f"## Best group by val_loss (min): {best['group']}\n")
    runs = summaries(logreg)
    mine = runs[(runs["estimator"] == best["estimator"]) & (runs["optimizer.lr"] == best["optimizer.lr"])]
    mean = np.mean([np.asarray(m) for m in mine["test_confusion"]], axis=0)
    assert "| Adelie | " + " | ".join(f"{v:.4g}" for v in mean[0]) + " |" in text  # rows named by class
    for name in ("confusion.png", "val_accuracy.png", "val_loss.png", "train_loss.png", "test_accuracy.png"):
        assert (out / name).stat().st_size > 0, name
    default = report(logreg, "--no-plots", out=out / "default")  # val_accuracy, maximised
    assert f"(max): {table.loc[table['val_accuracy'].idxmax(), 'group']}" in (default / "best.md").read_text()


def test_best_per_estimator_chooses_each_estimators_own_best_rate(logreg, capsys):
    out = report(logreg, "--no-plots", "--best-per", "estimator", "--select", "val_loss", "--target-loss", "0.7")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    best = pd.read_csv(out / "table_best.csv", dtype={"optimizer.lr": str})
    assert sorted(best["estimator"]) == ["backward", "forward"]
    for _, row in best.iterrows():
        mine = table[table["estimator"] == row["estimator"]]
        assert row["optimizer.lr"] == mine.loc[mine["val_loss"].idxmin(), "optimizer.lr"]
        assert "steps_to_target" in row and "reached" in row
    assert "## Best group per estimator (by val_loss)" in capsys.readouterr().out


def test_reference_columns_sit_beside_ours(logreg, tmp_path):
    reference = tmp_path / "reference.yaml"
    reference.write_text("reference:\n  source: report 999\n  rows:\n"
                         "    - match: {estimator: forward, optimizer.lr: 0.3}\n      values: {val_accuracy: 0.5}\n"
                         "    - match: {model: logreg}\n      values: {train_accuracy: 0.25}\n")
    out = report(logreg, "--no-plots", "--reference", str(reference), out=tmp_path / "out")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    matched = (table["estimator"] == "forward") & (table["optimizer.lr"] == "0.3")
    assert (table.loc[matched, "report val_accuracy"] == 0.5).all()
    assert table.loc[~matched, "report val_accuracy"].isna().all()
    assert (table["report train_accuracy"] == 0.25).all()  # a group choice, not an override
    header = (out / "table.md").read_text().splitlines()[0]
    assert "| val_accuracy | report val_accuracy |" in header and "report 999" in (out / "table.md").read_text()


def test_reference_from_the_runs_config_and_a_sweep_in_progress(logreg, tmp_path, capsys):
    """The experiment configs carry `reference` in the composed config; a job without
    summary.json yet is skipped and counted."""
    copy = tmp_path / "sweep"
    shutil.copytree(logreg, copy, ignore=shutil.ignore_patterns("report"))
    first = copy / "0"
    with open(first / ".hydra/config.yaml", "a") as f:
        f.write("reference:\n  source: report 998\n  rows:\n  - match:\n      optimizer: sgd\n"
                "    values:\n      test_accuracy: 0.75\n")
    (copy / "1" / "summary.json").unlink()
    out = report(copy, "--no-plots", "--ignore", "estimator")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    assert sorted(table["optimizer.lr"]) == ["-1", "0.03", "0.3"] and table["n"].sum() == 17
    assert (table["report test_accuracy"] == 0.75).all()
    assert "skipped 1 run dir(s) without summary.json" in capsys.readouterr().err


def test_cli_dispatch_and_bad_input(logreg, tmp_path, capsys):
    with pytest.MonkeyPatch.context() as mp:
        runner = Runner(tmp_path, mp)
        with pytest.raises(SystemExit) as exit_info:
            runner("report", str(logreg), "--no-plots", "--out", str(tmp_path / "cli"))
    assert exit_info.value.code == 0 and (tmp_path / "cli" / "table.md").exists()
    assert main([str(logreg), "--no-plots", "--out", str(tmp_path / "x"), "--select", "nope"]) == 2
    assert "--select nope: not a column" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1


def test_single_runs_of_one_config_with_reordered_overrides_form_one_group(runner, capsys):
    """Groups are resolved configs minus the seed and result-neutral keys (threads, plot): the
    order on the command line, a different thread count, or an override equal to the default
    (sgd's lr 0.05) makes no other group; another lr does."""
    runner("train", "model=logreg", "max_steps=5", "seed=0", *FAST)
    runner("train", "max_steps=5", "threads=1", "seed=1", "model=logreg", *FAST)
    runner("train", "optimizer.lr=0.05", "max_steps=5", "seed=2", "model=logreg", *FAST)
    runner("train", "optimizer.lr=0.1", "max_steps=5", "seed=0", "model=logreg", *FAST)
    assert main([str(runner.cwd / "outputs" / "runs"), "--no-plots"]) == 0
    table = pd.read_csv(runner.cwd / "outputs" / "runs" / "table.csv")
    assert table["n"].tolist() == [3, 1]
    assert table["group"].tolist() == ["eval_every=5 max_steps=5 model=logreg",
                                      "eval_every=5 max_steps=5 model=logreg optimizer.lr=0.1"]


def test_an_accuracy_interval_stays_within_0_and_1(logreg):
    """A t-interval of accuracies near 1 reaches past 1 (0.9855 ± 0.062): clipped, shown as
    [lo, hi]; an interval inside its range keeps `±`; steps cannot go below 0 either."""
    row = pd.Series({"ok": 5, "val_accuracy": 0.9855, "val_accuracy_ci": 0.062})
    assert cell(row, "val_accuracy") == "0.9855 [0.9235, 1]"
    assert interval(row, "val_accuracy") == (pytest.approx(0.9235), 1.0)
    assert cell(pd.Series({"ok": 5, "steps": 35.4, "steps_ci": 40.0}), "steps") == "35.4 [0, 75.4]"
    assert cell(pd.Series({"ok": 5, "val_accuracy": 0.5, "val_accuracy_ci": 0.1}), "val_accuracy") == "0.5 ± 0.1"
    table = pd.read_csv(report(logreg, "--no-plots") / "table.csv")
    for metric in ("train_accuracy", "val_accuracy", "test_accuracy", "best_val_accuracy"):
        ends = table[[f"{metric}_lo", f"{metric}_hi"]].dropna()
        assert len(ends) and ((ends >= 0) & (ends <= 1)).all().all()


def test_ties_for_the_best_group_are_said_to_be_ties():
    """Tied: the 95% intervals overlap; without a CI (one run) only an equal value ties."""
    table = pd.DataFrame({"group": ["a", "b", "c", "d", "e"], "ok": 3, "failed": 0, "stops": "max_steps×3",
                          "val_accuracy": [0.95, 0.93, 0.80, 0.95, 0.96],
                          "val_accuracy_ci": [0.01, 0.03, 0.01, math.nan, 0.005]})
    best = best_row(table, "val_accuracy")
    assert table.at[best, "group"] == "e" and ties(table, "val_accuracy", best) == [0, 1]
    text = best_section(table.loc[best], "val_accuracy", [], None, [table.loc[i] for i in ties(table, "val_accuracy", best)])
    assert "**Tied with 2 other group(s)**" in text and "- a: val_accuracy 0.95 ± 0.01" in text
    single = table.assign(val_accuracy_ci=math.nan)  # one seed each: only an exact tie counts
    assert ties(single, "val_accuracy", best) == [] and ties(single, "val_accuracy", 0) == [3]
    assert "No other group is tied" in best_section(table.loc[2], "val_accuracy", [], None)


def test_a_group_with_a_failed_run_is_not_best_while_a_complete_one_exists():
    """A group's mean leaves its failed runs out, so it may look best on the seeds that
    survived: it is no candidate (nor a tie) while some group completed every run; when no
    group did, the best is chosen among them all."""
    table = pd.DataFrame({"group": ["lucky", "complete", "worse"], "ok": [2, 3, 3], "failed": [1, 0, 0],
                          "stops": "max_steps×3", "val_accuracy": [0.99, 0.90, 0.89],
                          "val_accuracy_ci": [0.01, 0.02, 0.02]})
    best = best_row(table, "val_accuracy")
    assert table.at[best, "group"] == "complete" and ties(table, "val_accuracy", best) == [2]
    every_group_failed_once = table.assign(failed=1)
    assert every_group_failed_once.at[best_row(every_group_failed_once, "val_accuracy"), "group"] == "lucky"


def test_report_figures_as_pdf_and_svg_in_the_paper_style(toynet, tmp_path):
    out = report(toynet, "--style", "paper", "--width", "page", "--format", "pdf", "svg", out=tmp_path / "paper")
    assert (out / "train_loss.pdf").read_bytes().startswith(b"%PDF")
    assert "<svg" in (out / "train_loss.svg").read_text()[:1000]
    assert not (out / "train_loss.png").exists()


def test_the_confusion_matrix_names_its_group_and_has_a_colour_bar(logreg, monkeypatch, tmp_path):
    """confusion.png is titled with the best group's display name and what ran in words (the
    run title less the seed, learning rate included), and a colour bar says what the shades count."""
    from gradbench.present import report_plots

    titles = []
    draw = report_plots.draw_confusion
    monkeypatch.setattr(report_plots, "draw_confusion", lambda m, title, *a, **k: titles.append(title) or draw(m, title, *a, **k))
    out = report(logreg, "--select", "val_loss", out=tmp_path / "out")
    table = pd.read_csv(out / "table.csv", dtype={"optimizer.lr": str})
    best = table.loc[table["val_loss"].idxmin()]
    (title,) = titles
    lines = title.splitlines()
    assert lines[0] == names.label({"estimator": best["estimator"], "optimizer.lr": best["optimizer.lr"]}, {}, {}), title
    assert lines[1].startswith("penguins · logistic regression · ") and f"learning rate {best['optimizer.lr']}" in lines[1]
    assert lines[2].startswith("test set, mean over ")
    fig = draw(np.array([[5.0, 1.0], [2.0, 7.0]]), title, ["a", "b"])
    image, bar = fig.axes
    assert image.get_title() and bar.get_ylabel() == "test examples"
    assert bar.get_ylim()[0] == 0  # shades from zero examples
