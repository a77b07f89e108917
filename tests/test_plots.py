"""What a run and a report draw and name: the column registry every writer and reader uses,
run plots (title in display names, split colours, step 0, log scale, error rates, integer
steps, a diverged run marked, diagnostics), report overlays (every group in the legend, the
mean only where all seeds run, distinct styles, dotted only for diverged runs, coinciding
groups visible, plain ticks on short log ranges), the paper style, class names."""

import json
import math
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from conftest import FAST
from gradbench.cli import CONF, main
from gradbench.columns import METRICS, RUN, STEP_COLUMNS, better, describe, split_of
from gradbench.estimators.probes import GradientProbe
from gradbench.present.figstyle import PALETTE, SPLIT_COLOURS, WIDTHS, Look, wrap
from gradbench.present.names import SPLITS
from gradbench.present.plots import draw_run
from gradbench.present.report_plots import draw_overlays, style

MODELS = sorted(p.stem for p in (Path(CONF) / "model").glob("*.yaml"))


@pytest.fixture(autouse=True)
def close_figures():
    """draw_run and draw_overlays hand back open figures; close them after each test."""
    yield
    plt.close("all")


@pytest.mark.parametrize("name", MODELS)
def test_every_model_metric_is_in_the_registry(name):
    node = OmegaConf.load(Path(CONF) / "model" / f"{name}.yaml")
    target = node.get("_target_") or OmegaConf.load(Path(CONF) / "model" / f"{node.defaults[0]}.yaml")._target_
    assert set(get_class(target).metric_names) <= set(METRICS)


def test_the_registry_knows_every_run_column_and_its_direction():
    assert set(STEP_COLUMNS) | set(GradientProbe.columns) <= set(RUN)
    assert [better(c) for c in ("val_accuracy", "best_val_accuracy", "grad_cosine")] == ["max"] * 3
    assert [better(c) for c in ("train_loss", "test_errors", "steps_to_target", "grad_rel_error")] == ["min"] * 4
    assert better("step") is None and better("nonsense") is None
    assert [split_of(c) for c in ("val_loss", "best_val_loss", "batch_loss", "grad_cosine", "train_time_s")] == \
        ["val", "val", "batch", None, None]
    with pytest.raises(KeyError, match="not a gradbench column"):
        describe("val_bogus")


def lines(ax) -> dict[str, str]:
    """label → colour (hex) of an axis' labelled lines."""
    return {line.get_label(): mcolors.to_hex(line.get_color()) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_run_plots_say_what_ran_and_keep_one_colour_per_split(runner):
    (run,) = runner("train", "model=mlp", "model.hidden=[8]", "optimizer.lr=0.1", "seed=3", "max_steps=10",
                    "diagnose=true", *FAST)
    figures = draw_run(run)
    assert set(figures) == {"loss", "accuracy", "errors", "grad_cosine", "grad_rel_error"}
    for name in ("loss", "accuracy", "errors"):
        fig = figures[name]
        title = fig._suptitle.get_text()
        # display names (gradbench.present.names), the hidden sizes inside the model's name
        assert "penguins · MLP 4-8-3 · FG-W dense · SGD · learning rate 0.1" in title
        assert "seed 3" in title and "=" not in title and "plot" not in title  # result-neutral keys left out
        for ax in fig.axes:
            colours = lines(ax)
            # the legend's words stated literally (not through names.SPLITS, the registry under test)
            for split, word in (("train", "training"), ("val", "validation"), ("test", "test")):
                assert colours[word] == SPLIT_COLOURS[split]
            first = next(line for line in ax.get_lines() if line.get_label() == "training")
            if ax is fig.axes[0]:
                assert first.get_xdata()[0] == 0  # the initial evaluation, step 0
        fig.canvas.draw()
        assert all(t == int(t) for t in fig.axes[0].get_xticks())  # 10 steps: no tick at 2.5
    assert figures["loss"].axes[0].get_yscale() == "log" and figures["accuracy"].axes[0].get_yscale() == "linear"
    assert lines(figures["loss"].axes[0])["batch (each step)"] == SPLIT_COLOURS["batch"]
    for ax in figures["loss"].axes:  # the noisy batch loss is drawn behind the evaluations' curves
        order = [line.get_label() for line in sorted(ax.get_lines(), key=lambda line: line.get_zorder())]
        assert order.index("batch (each step)") < min(order.index(w) for w in ("training", "validation", "test"))
    # errors.png: rates (errors / split size = 1 − accuracy), so splits of 204 and 69 compare
    assert figures["errors"].axes[0].get_ylabel() == "error rate"
    for rate, accuracy in zip(figures["errors"].axes[0].get_lines(), figures["accuracy"].axes[0].get_lines()):
        assert np.all((rate.get_ydata() >= 0) & (rate.get_ydata() <= 1))
        assert np.allclose(rate.get_ydata(), 1 - accuracy.get_ydata())
    cosine = figures["grad_cosine"].axes[0].get_lines()[0].get_ydata()
    assert len(cosine) == 10 and np.all(np.abs(cosine) <= 1)


def test_run_titles_name_the_method_and_the_learning_rate_even_at_its_default(runner):
    """A run at SGD's default rate says it (0.05, conf/optimizer/sgd.yaml) right after the
    optimizer; backprop with local losses is L-BP, as the README's tables call it."""
    (run,) = runner("train", "estimator=backward", "model.local_losses=true", "model.local_groups=2",
                    "max_steps=3", *FAST)
    title = draw_run(run)["loss"]._suptitle.get_text().replace("\n", " ")
    assert "L-BP · SGD · learning rate 0.05" in title and "local losses" not in title, title


def curve(steps, values, time_per_step=0.01) -> pd.DataFrame:
    return pd.DataFrame({"step": steps, "train_time_s": np.asarray(steps) * time_per_step, "train_loss": values})


def test_report_overlays_keep_every_group_and_draw_the_mean_only_where_all_seeds_run():
    groups = {
        "lr=0.1": [(curve([0, 10, 20, 30], [2.0, 1.0, 0.5, 0.25]), "max_steps"),
                   (curve([0, 10, 20], [2.0, 1.2, 0.7]), "threshold")],  # stops early
        "lr=10": [(curve([0, 10], [2.0, 1e3]), "diverged"), (curve([0], [2.0]), "diverged")],
        "lr=-1": [(pd.DataFrame(), "failed")],  # nothing to draw at all
    }
    fig = draw_overlays(groups)["train_loss"]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert len(legend) == 3  # no group disappears
    assert legend[0] == "lr=0.1 (2 seeds, mean to step 20, 1 go on)"
    assert legend[1] == "lr=10 (2 seeds, 2 diverged)" and legend[2] == "lr=-1 (1 seed, 1 failed, not drawn)"
    bold = [line for line in fig.axes[0].get_lines() if line.get_linewidth() > 2]
    assert len(bold) == 1 and list(bold[0].get_xdata()) == [0, 10, 20]  # the mean ends where a seed ends
    assert np.allclose(bold[0].get_ydata(), [2.0, 1.1, 0.6])
    dotted = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 2  # the diverged seeds, up to their last value
    assert fig.axes[0].get_ylim()[1] < 10  # the finished runs' range: 1e3 would flatten them


def test_groups_get_distinct_looks_and_dotted_means_diverged_only():
    looks = {(mcolors.to_hex(style(i)["color"]), style(i)["linestyle"], style(i)["marker"]) for i in range(100)}
    assert len(looks) == 100 and len({mcolors.to_hex(style(i)["color"]) for i in range(len(PALETTE))}) == len(PALETTE)
    assert all(style(i)["linestyle"] != ":" for i in range(40))
    # 12 finished groups (as in a 12-run sweep) and one diverged: only the diverged one is dotted
    groups = {f"g{i}": [(curve([0, 10, 20], [2.0, 1.0 + i, 0.5 + i]), "max_steps")] for i in range(12)}
    groups["bad"] = [(curve([0, 10], [2.0, 1e3]), "diverged")]
    ax = draw_overlays(groups)["train_loss"].axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    solid = [line for line in ax.get_lines() if line.get_linestyle() != ":" and len(line.get_xdata()) > 1]
    assert len(dotted) == 1 and list(dotted[0].get_xdata()) == [0, 10]
    assert len(solid) == 24  # each finished group: its seed (thin) and its mean (bold), none dotted


def test_groups_whose_curves_coincide_stay_visible():
    """Exact methods give the same loss: the legend says so, and the markers of the two means
    sit on different steps, so both groups show."""
    steps = list(range(0, 101, 5))
    same = curve(steps, np.exp(-np.array(steps) / 30.0))
    groups = {"manual": [(same, "max_steps")], "backward": [(same.copy(), "max_steps")],
              "forward": [(curve(steps, np.exp(-np.array(steps) / 60.0)), "max_steps")]}
    fig = draw_overlays(groups)["train_loss"]
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend[1] == "backward (1 seed, identical to manual)" and "identical" not in legend[0] + legend[2]
    means = [line for line in fig.axes[0].get_lines() if line.get_linewidth() > 2]
    assert means[0].get_marker() != means[1].get_marker() and means[0].get_markevery() != means[1].get_markevery()


def test_short_log_ranges_get_plain_tick_labels_and_steps_integer_ticks():
    fig = draw_overlays({"a": [(curve(range(21), np.linspace(2.38, 2.28, 21)), "max_steps")]})["train_loss"]
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    fig.canvas.draw()
    low, high = ax.get_ylim()
    shown = [(t.get_text(), t.get_position()[1]) for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert len(shown) >= 3 and all(float(text) == pytest.approx(y, rel=1e-3) for text, y in shown)  # "2.3", not 2.3×10⁰
    assert not any(t.get_text() for t in ax.get_yticklabels(minor=True))
    assert all(float(t) == int(t) for t in ax.get_xticks())  # a 20-step run: 0, 5, 10, ..., not 2.5


def diverged_run(root: Path, summary: dict) -> Path:
    """A run dir by hand: the loss grows 10× a step from 2 to 2e30, then NaN at step 14."""
    root.mkdir()
    batch = [2.0 * 10.0 ** k for k in range(14)] + [math.nan]
    frame = pd.DataFrame({"step": range(1, 16), "batch_loss": batch, "train_time_s": np.arange(1, 16) * 0.01})
    frame["train_loss"] = [v if s % 5 == 0 else None for s, v in zip(frame["step"], batch)]
    frame.to_csv(root / "metrics.csv", index=False)
    (root / "summary.json").write_text(json.dumps({**summary, "initial": {"train": {"loss": 2.1}}}))
    return root


@pytest.mark.parametrize("summary", [{"stop_reason": "diverged", "diverged_at_step": 15},
                                     {"stop_reason": "diverged"}, {}], ids=["summary", "inferred", "no-summary"])
def test_a_diverged_run_is_marked(tmp_path, summary):
    """"diverged at step 15" and a ✕, from summary.json's diverged_at_step or inferred from the
    CSV's first NaN loss (run plots are drawn before summary.json exists); the y range stops
    short of the blow-up so the curve before it stays readable."""
    fig = draw_run(diverged_run(tmp_path / "run", summary))["loss"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["diverged at step 15"]
    assert any(line.get_marker() == "x" and line.get_xdata()[0] == 15 for line in ax.get_lines())
    assert ax.get_ylim()[1] < 1e5  # not 1e30


def test_a_finished_run_is_not_marked(runner):
    (run,) = runner("train", "model=logreg", "max_steps=5", *FAST)
    for fig in draw_run(run).values():
        assert not fig.axes[0].texts and not any(line.get_marker() == "x" for line in fig.axes[0].get_lines())


def test_long_titles_wrap_between_parts_only():
    parts = ["penguins", "MLP 4-64-8-3", "forward gradient (rank-1)", "SGD", "learning rate 0.01",
             "momentum 0.9", "weight decay 0.0001", "until loss < 0.2", "seed 10"]
    text = wrap(parts, 40)
    assert len(text.splitlines()) > 1
    for line in text.splitlines():
        assert all(piece in parts for piece in line.split(" · "))  # no value split, no lone "0"


def test_paper_style_is_a_column_wide_serif_figure_without_title():
    look = Look("paper", "column")
    with look.rc():
        fig = draw_overlays({"a": [(curve([0, 10, 20], [2.0, 1.0, 0.5]), "max_steps")]}, look)["train_loss"]
        assert fig.get_figwidth() == WIDTHS["column"] and fig._suptitle is None
        label = fig.axes[0].yaxis.label
        assert label.get_text() == "training loss" and label.get_fontsize() == 8
        assert "STIX" in label.get_fontname()


def test_class_names_reach_the_summary_the_report_and_model_pt(runner):
    runs = runner("train", "-m", "model=logreg", "seed=0,1", "max_steps=10", *FAST)
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["class_names"] == ["Adelie", "Chinstrap", "Gentoo"]
    sweep = runs[0].parent
    with pytest.raises(SystemExit):
        main(["report", str(sweep)])
    best = (sweep / "best.md").read_text()
    assert "| true \\ predicted | Adelie | Chinstrap | Gentoo |" in best and "| Gentoo | " in best


def test_model_pt_rebuilds_the_model_on_raw_inputs(runner):
    """model.pt alone (config, preprocessing, class names, input shape) classifies raw penguin
    measurements: over all 342 rows, its errors equal the sum of the run's final errors on the
    three splits, exactly (the same float64 standardisation, then float32, as training)."""
    from hydra.utils import instantiate
    from palmerpenguins import load_penguins

    (run,) = runner("train", "model=mlp", "max_steps=30", *FAST)
    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["class_names"] == ["Adelie", "Chinstrap", "Gentoo"] and saved["config"]["seed"] == 0
    model = instantiate(saved["model"], input_shape=tuple(saved["input_shape"]), num_classes=saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    prep = saved["preprocessing"]
    frame = load_penguins().dropna(subset=prep["features"])
    raw = torch.tensor(frame[prep["features"]].to_numpy(), dtype=torch.float64)
    x = ((raw - torch.tensor(prep["standardise"]["mean"], dtype=torch.float64))
         / torch.tensor(prep["standardise"]["std"], dtype=torch.float64)).to(getattr(torch, saved["dtype"]))
    names = [saved["class_names"][k] for k in model(x).argmax(1).tolist()]
    errors = sum(a != b for a, b in zip(names, frame["species"]))
    final = json.loads((run / "summary.json").read_text())["final"]
    assert errors == sum(final[s]["errors"] for s in ("train", "val", "test"))


def test_functions_figures_in_the_paper_style_as_pdf(runner):
    """`gradbench functions --style paper --format pdf`: the paths figure as a PDF, a page wide."""
    runner("train", "-m", "+protocol=functions_beale", "estimator=backward,forward", "seed=0", "max_steps=20",
           "plot=false", "log_every_s=1000")
    sweep = next((runner.cwd / "outputs" / "multirun").glob("*/*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["functions", str(sweep), "--style", "paper", "--width", "page", "--format", "pdf"])
    assert exit_info.value.code == 0
    assert (sweep / "functions_beale.pdf").read_bytes().startswith(b"%PDF")
    assert not (sweep / "functions_beale.png").exists()


def test_a_long_curve_is_drawn_by_its_envelope():
    """A 10⁶-row metrics.csv draws at most 2 points per bucket (its lowest and highest) plus the
    ends: the spikes a pixel column would show stay, the first and last point stay, and a curve
    short enough is drawn whole."""
    from gradbench.present.report_plots import POINTS, envelope

    values = np.random.default_rng(0).normal(size=10**6)
    values[123_457], values[876_543] = 50.0, -50.0  # one spike each way, inside a bucket
    kept = envelope(values)
    assert len(kept) <= 2 * POINTS + 2 and np.all(np.diff(kept) > 0)
    assert {0, 10**6 - 1, 123_457, 876_543} <= set(kept.tolist())
    size = -(-10**6 // POINTS)  # every bucket's extremes are kept
    for start in range(0, 10**6, size * 97):
        block = values[start:start + size]
        assert {start + int(block.argmin()), start + int(block.argmax())} <= set(kept.tolist())
    assert np.array_equal(envelope(values[:2 * POINTS]), np.arange(2 * POINTS))
