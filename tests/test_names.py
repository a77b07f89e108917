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
    assert names.option("estimator", "forward_rank1") == "forward gradient (rank-1)"
    assert names.option("estimator", "backward") == "backprop"
    assert names.option("estimator", "forward_activities") == "forward gradient (activities)"  # being added
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
    assert names.label(local, {}, {}) == "forward gradient (activities), local losses, learning rate 0.1"


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
    assert label == "forward gradient, MLP 4-64-8-3, learning rate 0.1"
