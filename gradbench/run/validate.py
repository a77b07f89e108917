"""Every run key and every group option's arguments, checked before any work, in one place.

Types come from the configs themselves: a value must have the type of its option's default in
conf/ (a float where the YAML has 0.05, a list of ints where it has [64, 8], a bool where it
has false), so a new option is type-checked without a line here. Ranges, and the keys whose
default is null, are the RULES below. A problem ends the command with one line,
`KEY must be ..., got ...` (gradbench.errors.ConfigError).
"""

from __future__ import annotations

from typing import Any, Callable

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from gradbench.columns import SPLITS
from gradbench.errors import ConfigError, require
from gradbench.run.event_log import LOGGERS
from gradbench.run.tracker import TRACKING_SCHEMES
from gradbench.models import INIT_LAWS
from gradbench.paths import GROUPS

SKIP = ("hydra", "check", "bench", "reference", "search")  # checked by their own commands, or free-form


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_or_null(v, cfg) -> bool:
    return v is None or (is_int(v) and v >= 1)


def _sweep_metric(v, cfg) -> bool:
    split, _, metric = str(v).partition("_")
    names = getattr(get_class(cfg.model._target_), "metric_names", ())
    return split in SPLITS and metric in names


# dotted key → (allowed(value, cfg), what is allowed); a rule applies where the key exists
Rule = tuple[Callable[[Any, DictConfig], bool], str]
RULES: dict[str, Rule] = {
    "seed": (lambda v, c: is_int(v), "must be an integer"),
    "threads": (lambda v, c: v == "auto" or positive_or_null(v, c), "must be auto, a positive integer or null"),
    "batch_size": (positive_or_null, "must be a positive integer or null"),
    "max_steps": (positive_or_null, "must be a positive integer or null"),
    "max_epochs": (positive_or_null, "must be a positive integer or null"),
    "checkpoint_every": (positive_or_null, "must be a positive integer or null"),
    "stop_below": (lambda v, c: v is None or (is_number(v) and v > 0), "must be a number > 0 or null"),
    "resume": (lambda v, c: v is None or isinstance(v, (bool, str)), "must be true, false, null or a run dir"),
    "eval_every": (lambda v, c: v >= 1, "must be >= 1"),
    "eval_chunk": (lambda v, c: v >= 1, "must be >= 1"),
    "log_every_s": (lambda v, c: v >= 0, "must be >= 0"),
    "logger.name": (lambda v, c: v in LOGGERS, f"must be one of {' | '.join(LOGGERS)}"),
    "logger.tracking_uri": (lambda v, c: v is None or (isinstance(v, str) and v.split(":", 1)[0] in TRACKING_SCHEMES),
                            f"must be null (the local store) or a URI: {' | '.join(f'{s}:...' for s in TRACKING_SCHEMES)}"),
    "eval_splits": (lambda v, c: all(s in SPLITS for s in v), f"must be a subset of {list(SPLITS)}"),
    "sweep_metric": (_sweep_metric, "must be <split>_<metric>: split train | val | test, metric one the model "
                     "reports (loss, accuracy, errors for classifiers)"),
    "optimizer.lr": (lambda v, c: 0 < v < float("inf"), "must be a finite number > 0"),  # inf: nan after one step
    "optimizer.momentum": (lambda v, c: 0 <= v < 1, "must be in [0, 1)"),
    "optimizer.dampening": (lambda v, c: 0 <= v < 1, "must be in [0, 1)"),
    "optimizer.weight_decay": (lambda v, c: v >= 0, "must be >= 0"),
    "optimizer.nesterov": (lambda v, c: not v or c.optimizer.get("momentum", 0) > 0, "needs optimizer.momentum > 0"),
    "optimizer.betas": (lambda v, c: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    "optimizer.eps": (lambda v, c: v > 0, "must be > 0"),
    "schedule.rate": (lambda v, c: v >= 0, "must be >= 0"),
    "schedule.steps": (positive_or_null, "must be a positive integer (warmup_cosine: the run's max_steps)"),
    "schedule.warmup": (lambda v, c: 0 <= v < 1, "must be a fraction in [0, 1)"),
    "schedule.final": (lambda v, c: 0 <= v <= 1, "must be in [0, 1]"),
    "model.hidden": (lambda v, c: all(h >= 1 for h in v), "must be a list of positive sizes"),
    "model.channels": (lambda v, c: len(v) >= 1 and all(h >= 1 for h in v), "must be a non-empty list of positive channel counts"),
    "model.l2": (lambda v, c: v >= 0, "must be >= 0"),
    "model.init.law": (lambda v, c: v in INIT_LAWS, f"must be one of {' | '.join(INIT_LAWS)}"),
    "model.init.std": (lambda v, c: v > 0, "must be > 0"),
    "model.init.b": (lambda v, c: c.model.init.get("law") != "uniform" or v > c.model.init.get("a", -1.0),
                     "must be > model.init.a for the uniform law"),
    "estimator.num_tangents": (lambda v, c: v >= 1, "must be >= 1"),
    "estimator.step": (lambda v, c: v > 0, "must be > 0"),
    "estimator.chunk": (lambda v, c: v >= 1, "must be >= 1"),
    "estimator.num_queries": (lambda v, c: is_int(v) and v >= 1, "must be an integer >= 1"),
    "estimator.epsilon": (lambda v, c: is_number(v) and v > 0, "must be a number > 0"),
    "estimator.difference": (lambda v, c: v in ("central", "forward"), "must be one of central | forward"),
    "estimator.law": (lambda v, c: v in ("normal", "rademacher"), "must be one of normal | rademacher"),
    "estimator.scaling": (lambda v, c: v in ("network", "block"), "must be one of network | block"),
    "estimator.segments": (lambda v, c: v in ("sqrt", "per_block") or (is_int(v) and v >= 1),
                           "must be sqrt | per_block or an integer >= 1"),
    "estimator.micro_batches": (lambda v, c: is_int(v) and v >= 1, "must be an integer >= 1"),
    # an empty list would time nothing; bench used to fall back to the run's batch size silently
    "bench.batch_sizes": (lambda v, c: len(v) >= 1 and all(s is None or (is_int(s) and s >= 1) for s in v),
                          "must be a non-empty list of positive batch sizes or null (the run's batch_size)"),
    "dataset.val_size": (lambda v, c: (is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v < 1),
                         "must be a count (int >= 0) or a fraction (float in [0, 1))"),
    "dataset.val_fraction": (lambda v, c: 0 <= v < 1, "must be in [0, 1)"),
    "dataset.test_fraction": (lambda v, c: 0 <= v < 1, "must be in [0, 1)"),
}
TYPED_BY_RULE = ("dataset.val_size", "threads", "estimator.segments")  # more than one type: the rule says which
TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def validate(cfg: DictConfig, reference: DictConfig | None = None) -> None:
    """Check `cfg` against the types of `reference` (the same group choices without the
    command's value overrides; composed here when not given) and against RULES."""
    if reference is None:
        reference = _reference()
    plain = OmegaConf.to_container(cfg, resolve=True)
    _check_types(plain, OmegaConf.to_container(reference, resolve=True), "")
    for key, (allowed, rule) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        try:
            ok = allowed(value, cfg)
        except (TypeError, ValueError, AttributeError, ImportError):
            ok = False
        require(bool(ok), key, rule, _plain(value))


_ABSENT = object()


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _kind(value) -> type | None:
    for kind in (bool, int, float, str, list, dict):
        if isinstance(value, kind):
            return kind
    return None


def _check_types(value, default, key: str) -> None:
    if default is None or value is None or key.split(".")[0] in SKIP or key in TYPED_BY_RULE:
        return  # a null default or value: RULES say what is allowed
    expected, got = _kind(default), _kind(value)
    if expected is float and got is int:
        return  # 1 where 1.0 stands
    if expected is dict and got is dict:
        for k, v in value.items():
            if k in default:
                _check_types(v, default[k], f"{key}.{k}" if key else k)
        return
    if expected != got:
        raise ConfigError(f"{key} must be {TYPES.get(expected, expected.__name__)}, got {value!r}")
    if expected is list and default and value:
        for item in value:
            _check_types(item, default[0], key)


def _reference() -> DictConfig:
    """The config of this run's group choices with the defaults' values (no value overrides)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    choices = hydra.runtime.choices
    overrides = [o for o in hydra.overrides.task if o.lstrip("+~").split("=")[0].split("/")[0] in
                 (*GROUPS, "experiment", "protocol", "local", "optimizer/preset")]
    overrides += [f"{g}={choices[g]}" for g in GROUPS if g in choices
                  and not any(o.lstrip("+~").startswith(f"{g}=") for o in overrides)]
    try:
        return compose("config", overrides)
    except Exception:  # an override this composition cannot take: no reference, rules only
        return OmegaConf.create({})
