"""Display names: what a figure, legend or title calls a config option, an override and a split.

One registry, so every plot says "FG-W rank-1", "MLP 784-1024-1024-10" and "learning rate
0.01", never `estimator=forward_rank1 optimizer.lr=0.01`. A method has one name everywhere: the
short name the README's tables give it (FG-W dense, FG-A, L-BP, LG-FG-A, ...), in legends and
titles too; an estimator with the settings that make it another method (backprop with local
losses is L-BP) is named by METHODS. tests/test_names.py globs conf/<group>/*.yaml and fails on
an option without a name here, so a new option cannot be forgotten. report's table.md keeps the
raw keys (for grepping and re-aggregating).
"""

from __future__ import annotations

import re

# Every option of every config group (conf/<group>/<option>.yaml), and the `+` groups a sweep varies.
OPTIONS = {
    # the README tables' short names: FG-W = weight perturbation, FG-A = activity perturbation
    "estimator": {"forward": "FG-W dense", "forward_rank1": "FG-W rank-1",
                  "forward_activities": "FG-A",
                  "forward_project": "projection", "backward": "backprop",
                  "manual": "hand-derived backprop", "finite_difference": "finite differences",
                  # bench.extra entries of conf/benchmark/ (bench.csv's estimator column)
                  "mean_k8": "mean K = 8 (rank-1)", "project_k8": "projection K = 8 (rank-1)",
                  "l_bp": "L-BP", "lg_fg_a": "LG-FG-A",
                  "zeroth_order": "ZO dense", "zo_rank1": "ZO rank-1", "zeroth_order_replay": "ZO replay (MeZO)",
                  "local_guess": "local guess",
                  "feedback_alignment": "FA", "direct_feedback_alignment": "DFA",
                  "backward_checkpoint": "backprop (checkpointed)", "backward_accumulate": "backprop (accumulated)"},
    "model": {"logreg": "logistic regression", "mlp": "MLP", "cnn": "CNN (report 000)",
              "cnn_paper": "the paper's CNN", "toynet": "toy network (report 002)", "beale": "Beale",
              "rosenbrock": "Rosenbrock", "sphere": "sphere"},
    "optimizer": {"sgd": "SGD", "adam": "Adam", "gd": "gradient descent", "manual_sgd": "SGD (hand-written)",
                  "nag": "Nesterov (NAG)", "sign_sgd": "sign descent"},
    "dataset": {"penguins": "penguins", "toy": "toy blobs", "toy_inputs": "toy inputs", "mnist": "MNIST",
                "cifar10": "CIFAR-10", "cifar10_carcat": "CIFAR-10 car/cat", "none": "no data"},
    "schedule": {"constant": "constant learning rate", "exponential": "exponential decay",
                 "warmup_cosine": "warm-up + cosine decay"},
    "logger": {"csv": "CSV", "tensorboard": "TensorBoard", "mlflow": "MLflow"},
    "optimizer/preset": {f"r001_m{i}": f"report 001 model {i}" for i in range(1, 6)},
    "protocol": {"r000_logreg": "report 000 logistic regression", "r000_mlp": "report 000 MLP",
                 "r000_cnn": "report 000 CNN", "r000_cnn_backprop": "report 000 CNN (backprop protocol)",
                 "r001_carcat": "report 001", "r002_toynet": "report 002", "r003_penguins": "report 003",
                 "r004_cifar": "report 004", "paper_mnist": "the paper's MNIST protocol",
                 "functions_beale": "Beale", "functions_rosenbrock": "Rosenbrock", "functions_sphere": "sphere"},
}

# Splits as a paper says them ("training loss", not train_loss).
SPLITS = {"train": "training", "val": "validation", "test": "test", "batch": "batch"}

# Override keys: a phrase with the value in it ({v}), or one phrase per value.
KEYS = {
    "optimizer.lr": "learning rate {v}",
    "optimizer.momentum": "momentum {v}",
    "optimizer.weight_decay": "weight decay {v}",
    "optimizer.nesterov": {"true": "Nesterov momentum", "false": "heavy-ball momentum"},
    "estimator.num_tangents": "{v} tangents",
    "estimator.structure": {"dense": "dense tangents", "rank1": "rank-1 tangents"},
    # "" = unremarkable (a default): left out of a label, so "backprop" beside "backprop, local losses"
    "estimator.tangent": {"normal": "normal tangents", "rademacher": "Rademacher tangents"},
    "estimator.combine": {"project": "projection"},
    "estimator.engine": "{v} engine",
    "estimator.step": "step {v}",
    "estimator.num_queries": "{v} queries",
    "estimator.difference": {"central": "central differences", "forward": "forward differences"},
    "estimator.epsilon": "ε {v}",
    "estimator.law": {"normal": "normal directions", "rademacher": "Rademacher directions"},
    "estimator.replay": {"true": "in-place replay", "false": "stored directions"},
    "estimator.scaling": {"block": "per-block scaling", "network": "network scaling"},
    "estimator.segments": {"sqrt": "√L segments", "per_block": "a segment per layer"},
    "estimator.micro_batches": "{v} micro-batches",
    "model.local_losses": {"true": "local losses", "false": ""},
    "model.local_groups": "{v} local groups",
    "model.activation": "{v}",
    "model.l2": "λ {v}",
    "model.init.law": "{v} init",
    "model.dim": "n = {v}",
    "dataset.train_size": "{v} training examples",
    "batch_size": "batch {v}",
    "max_steps": "at most {v} steps",
    "max_epochs": "at most {v} epochs",
    "stop_below": "until loss < {v}",
    "schedule.rate": "decay rate {v}",
    "seed": "seed {v}",
    "dtype": "{v}",
}
MODEL_KEYS = ("model", "model.hidden")  # shown together as the model's name with its layer sizes

# Methods that are an estimator with settings, by the README tables' names: (name, {key: value}),
# the first rule whose keys all hold names the method, and the keys it names are not repeated
# ("L-BP", not "backprop, local losses"). A value "!x" holds for anything but x (a key absent
# from the run counts as its default, written in the rule's key as "key=default"); {key} in the
# name is that key's value. Add a rule for a new combination; never reorder earlier ones.
METHODS = (
    ("L-BP", {"estimator": "backward", "model.local_losses": "true"}),
    ("LG-FG-A", {"estimator": "forward_activities", "model.local_losses": "true"}),
    ("projection K = {estimator.num_tangents} (rank-1)", {"estimator": "forward_project", "estimator.structure": "rank1"}),
    ("projection K = {estimator.num_tangents}", {"estimator": "forward_project"}),
    ("mean K = {estimator.num_tangents} (rank-1)", {"estimator": "forward_rank1", "estimator.num_tangents=1": "!1"}),
    ("mean K = {estimator.num_tangents}", {"estimator": "forward", "estimator.num_tangents=1": "!1"}),
)


def option(group: str, choice: str) -> str:
    """A group option's display name (the option itself where the registry has none)."""
    return OPTIONS.get(group.lstrip("+"), {}).get(str(choice), str(choice))


def setting(key: str, value) -> str:
    """`optimizer.lr=0.01` → "learning rate 0.01"; an unknown key → its last part in words."""
    key, value = key.lstrip("+~"), str(value)
    if key in OPTIONS:
        return option(key, value)
    phrase = KEYS.get(key)
    if isinstance(phrase, dict):
        return phrase.get(value.lower(), f"{key.rsplit('.', 1)[-1].replace('_', ' ')} {value}")
    if phrase is None:
        phrase = key.rsplit(".", 1)[-1].replace("_", " ") + " {v}"
    if key == "estimator.num_tangents" and value == "1":
        return ""
    return phrase.format(v=value)


def layer_sizes(config: dict, summary: dict | None = None) -> tuple[int, int] | None:
    """(inputs, classes) of an MLP: solved from summary.json's parameter count and class names
    (exact for any data, PCA included); before the summary exists (run plots are drawn first),
    from the dataset config where its shape is fixed; else None."""
    hidden, summary = list(config.get("model", {}).get("hidden") or []), summary or {}
    classes = len(summary.get("class_names") or []) or None
    if classes and summary.get("num_params"):
        # n = (inputs+1)·h1 + Σ (h_i+1)·h_{i+1} + (h_k+1)·classes; everything but `inputs` is known
        widths = hidden + [classes]
        rest = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
        inputs = (summary["num_params"] - rest) / widths[0] - 1
        if inputs == int(inputs) and inputs > 0:
            return int(inputs), classes
    data = config.get("dataset", {})
    target = str(data.get("_target_", ""))
    if target.endswith("penguins"):
        return 4, 3
    if target.endswith(".toy"):
        return int(data["features"]), int(data["classes"])
    for name, channels, side, k in (("mnist", 1, 28, 10), ("cifar10", 3, 32, 10)):
        if target.endswith(name) and not data.get("pca_variance"):
            side = data.get("resize") or side
            return channels * side * side, len(data.get("classes") or []) or k
    return None


def model_name(config: dict, choice: str, summary: dict | None = None) -> str:
    """"MLP 4-64-8-3", "logistic regression"; other models by their option name."""
    if choice not in ("mlp", "logreg"):
        return option("model", choice)
    hidden = list(config.get("model", {}).get("hidden") or [])
    if not hidden:
        return option("model", "logreg")
    sizes = layer_sizes(config, summary)
    if sizes is None:
        return "MLP, hidden " + "-".join(map(str, hidden))
    return "MLP " + "-".join(map(str, [sizes[0], *hidden, sizes[1]]))


def lookup(config: dict, key: str):
    """A dotted key's value in a (resolved) config dict; None where it has none."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def method(values: dict, config: dict | None = None) -> tuple[str, tuple[str, ...]] | None:
    """(the method's name, the keys it names) by the first rule of METHODS that holds for
    `values` (key → value: the estimator's option and overrides), a key missing there read from
    the run's `config`; None where no rule holds (the estimator's own name then says it)."""
    values = {k.lstrip("+~"): v for k, v in values.items()}
    # booleans as YAML writes them: True, "True" (a report's parsed override) and "true" alike
    text = lambda v: str(v).lower() if str(v).lower() in ("true", "false") else str(v)  # noqa: E731

    def value(key: str):
        key, _, default = key.partition("=")
        found = values.get(key)
        found = lookup(config or {}, key) if found is None else found
        return text(found) if found is not None else (default or None)

    for name, rule in METHODS:
        ok = all((value(k) is not None and value(k) != want[1:]) if want.startswith("!") else value(k) == want
                 for k, want in rule.items())
        if ok:
            shown = re.findall(r"\{([^}]+)\}", name)  # not str.format: it reads a dot as an attribute
            for key in shown:
                name = name.replace(f"{{{key}}}", str(value(key)))
            return name, tuple(dict.fromkeys([k.partition("=")[0] for k in rule] + shown))
    return None


def label(keys: dict[str, str], choices: dict, config: dict, summary: dict | None = None) -> str:
    """A run's or group's display label from the override keys that matter (`keys`: key → value):
    the method by its name (METHODS, else the estimator's), the model by its layer sizes (once),
    the rest by KEYS."""
    parts = []
    keys = {k.lstrip("+~"): v for k, v in keys.items()}
    estimator = keys.get("estimator") or choices.get("estimator")
    # the method is named where the estimator or a key that makes it another method varies: groups
    # of backprop with and without local losses read "L-BP" and "backprop"
    ruled = {k.partition("=")[0] for _, rule in METHODS for k in rule}
    named = None
    if estimator and any(keys.get(k) is not None for k in ruled):
        named = method({**keys, "estimator": estimator}, config) or (option("estimator", estimator), ("estimator",))
    said = False
    for key, value in keys.items():
        if value is None:  # a key this group does not have (backprop's estimator.structure, say)
            continue
        if named and (key == "estimator" or key in named[1]):
            if said:
                continue
            part, said = named[0], True
        elif key in MODEL_KEYS:
            part = model_name(config, choices.get("model", "mlp"), summary)
        else:
            part = setting(key, value)
        if part and part not in parts:
            parts.append(part)
    if named and not said:  # the estimator does not vary and no rule held: its own name, first
        parts.insert(0, named[0])
    return ", ".join(parts) or "defaults"

