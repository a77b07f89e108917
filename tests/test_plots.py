"""What a run and a report draw and name: the column registry every writer and reader uses,
run plots (title, split colours, step 0, log scale, diagnostics), report overlays (every group
in the legend, the mean only where all seeds run, distinct styles), class names."""

import json
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from conftest import FAST
from gradbench.cli import CONF, main
from gradbench.columns import METRICS, RUN, SPLIT_COLOURS, STEP_COLUMNS, better, describe, split_of
from gradbench.plots import draw_run
from gradbench.estimators.probes import GradientProbe
from gradbench.report_plots import draw_overlays, style

MODELS = sorted(p.stem for p in (Path(CONF) / "model").glob("*.yaml"))


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
        assert "penguins · mlp · forward · sgd" in title and "optimizer.lr=0.1" in title and "seed 3" in title
        assert "model.hidden=[8]" in title and "plot=false" not in title  # result-neutral keys left out
        for ax in fig.axes:
            colours = lines(ax)
            for split in ("train", "val", "test"):
                assert colours[split] == SPLIT_COLOURS[split]
            first = next(line for line in ax.get_lines() if line.get_label() == "train")
            if ax is fig.axes[0]:
                assert first.get_xdata()[0] == 0  # the initial evaluation, step 0
    assert figures["loss"].axes[0].get_yscale() == "log" and figures["accuracy"].axes[0].get_yscale() == "linear"
    assert lines(figures["loss"].axes[0])["batch (each step)"] == SPLIT_COLOURS["batch"]
    cosine = figures["grad_cosine"].axes[0].get_lines()[0].get_ydata()
    assert len(cosine) == 10 and np.all(np.abs(cosine) <= 1)


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
    assert legend[0] == "lr=0.1 (n=2, mean to step 20, 1 seed(s) go on)"
    assert legend[1] == "lr=10 (n=2, 2 diverged)" and legend[2] == "lr=-1 (n=1, 1 failed, not drawn)"
    bold = [line for line in fig.axes[0].get_lines() if line.get_linewidth() > 2]
    assert len(bold) == 1 and list(bold[0].get_xdata()) == [0, 10, 20]  # the mean ends where a seed ends
    assert np.allclose(bold[0].get_ydata(), [2.0, 1.1, 0.6])
    dotted = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == 2  # the diverged seeds, up to their last value
    assert fig.axes[0].get_ylim()[1] < 10  # the finished runs' range: 1e3 would flatten them


def test_ten_groups_get_ten_distinct_looks():
    looks = {(mcolors.to_hex(style(i)["color"]), style(i)["linestyle"]) for i in range(40)}
    assert len(looks) == 40 and len({mcolors.to_hex(style(i)["color"]) for i in range(10)}) == 10


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
