"""The display-name registry (gradbench.present.names): every option of every config group has a name,
so a new option cannot be forgotten; override keys read as words; models carry their sizes."""

from pathlib import Path

import pytest

from gradbench.present import names
from gradbench.cli import CONF

GROUPS = ("estimator", "model", "optimizer", "dataset", "schedule", "optimizer/preset", "protocol")


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_has_a_display_name(group):
    options = sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))
    assert options, group
    missing = [o for o in options if o not in names.OPTIONS[group]]
    assert not missing, f"add a display name to gradbench/present/names.py OPTIONS[{group!r}] for {missing}"


def test_options_and_keys_read_as_words():
    assert names.option("estimator", "forward_rank1") == "FG-W rank-1"
    assert names.option("estimator", "backward") == "backprop"
    assert names.option("estimator", "forward_activities") == "FG-A"
    assert names.setting("optimizer.lr", "0.01") == "learning rate 0.01"
    assert names.setting("estimator.combine", "project") == "projection"
    assert names.setting("estimator.num_tangents", "8") == "8 tangents"
    assert names.setting("estimator.structure", "rank1") == "rank-1 tangents"
    assert names.setting("+model.local_losses", "true") == "local losses"
    assert names.setting("eval_every", "5") == "eval every 5"  # a key the registry lacks: still words
    # stated literally, not through the registry under test: a swap of val and test must fail
    assert names.SPLITS == {"train": "training", "val": "validation", "test": "test", "batch": "batch"}


def test_a_label_leaves_out_keys_a_group_lacks_and_defaults():
    # backprop has no estimator.structure (None); one tangent and a global loss are the defaults
    keys = {"estimator": "backward", "estimator.structure": None, "estimator.num_tangents": "1",
            "model.local_losses": "false", "optimizer.lr": "0.1"}
    assert names.label(keys, {}, {}) == "backprop, learning rate 0.1"
    local = {**keys, "estimator": "forward_activities", "model.local_losses": "true"}
    assert names.label(local, {}, {}) == "LG-FG-A, learning rate 0.1"


def test_models_are_named_with_their_layer_sizes():
    mnist = {"model": {"hidden": [1024, 1024]}, "dataset": {"_target_": "gradbench.data.images.mnist"}}
    assert names.model_name(mnist, "mlp") == "MLP 784-1024-1024-10"
    penguins = {"model": {"hidden": [64, 8]}, "dataset": {"_target_": "gradbench.data.tabular.penguins"}}
    assert names.model_name(penguins, "mlp") == "MLP 4-64-8-3"
    assert names.model_name({"model": {"hidden": []}}, "logreg") == "logistic regression"
    # PCA: the input size is solved from the summary's parameter count (100 inputs here)
    pca = {"model": {"hidden": [32]}, "dataset": {"_target_": "gradbench.data.images.cifar10", "pca_variance": 0.95}}
    summary = {"num_params": 101 * 32 + 33 * 10, "class_names": [str(i) for i in range(10)]}
    assert names.model_name(pca, "mlp", summary) == "MLP 100-32-10"
    assert names.model_name(pca, "mlp") == "MLP, hidden 32"
    label = names.label({"estimator": "forward", "model.hidden": "[64,8]", "optimizer.lr": "0.1"},
                        {"model": "mlp"}, penguins)
    assert label == "FG-W dense, MLP 4-64-8-3, learning rate 0.1"


README = (Path(__file__).parents[1] / "README.md").read_text()


def test_a_method_has_the_readme_tables_name_in_figures_too():
    """The forward-gradient family as `make fg-family` trains it (its FG_METHODS overrides; a key
    it does not override read from the run's config) is named as the README's table names it,
    and every one of those names is a row of that table."""
    project = {"estimator": {"num_tangents": 8, "structure": "rank1", "combine": "project"}}
    family = [({"estimator": "backward"}, {}, "backprop"),
              ({"estimator": "forward"}, {}, "FG-W dense"),
              ({"estimator": "forward_rank1"}, {"estimator": {"num_tangents": 1}}, "FG-W rank-1"),
              ({"estimator": "forward_activities"}, {"model": {"local_losses": False}}, "FG-A"),
              ({"estimator": "forward_rank1", "estimator.num_tangents": "8"}, {}, "mean K = 8 (rank-1)"),
              ({"estimator": "forward_project", "estimator.structure": "rank1"}, project, "projection K = 8 (rank-1)"),
              ({"estimator": "backward", "model.local_losses": "true"}, {}, "L-BP"),
              ({"estimator": "forward_activities"}, {"model": {"local_losses": True}}, "LG-FG-A")]
    for keys, config, name in family:
        assert names.label(keys, {"estimator": keys["estimator"]}, config) == name, keys
        assert f"| {name} |" in README or f"| **{name}** |" in README, name
    # the bench presets' own entries (conf/benchmark/fg_family.yaml) by the same names
    assert [names.option("estimator", e) for e in ("mean_k8", "project_k8", "l_bp", "lg_fg_a")] == \
        ["mean K = 8 (rank-1)", "projection K = 8 (rank-1)", "L-BP", "LG-FG-A"]
    # where only local losses vary between groups, the method is named all the same
    backprop = {"estimator": "backward"}
    assert [names.label({"model.local_losses": v}, backprop, {}) for v in ("true", "false")] == ["L-BP", "backprop"]
    assert names.label({"estimator": "backward", "model.local_losses": "True"}, {}, {}) == "L-BP"  # report's spelling
    # a rule's keys are not repeated: "L-BP, learning rate 0.1", not "L-BP, local losses, ..."
    assert names.label({"estimator": "backward", "model.local_losses": "true", "optimizer.lr": "0.1"}, {}, {}) == \
        "L-BP, learning rate 0.1"
