"""`gradbench eval RUN_DIR [split=test] [predictions=true] [device=cpu] [--config-dir DIR]`: a trained model, again.

Rebuilds the data split and the model from the run's own resolved config (summary.json, else
model.pt's), validated as a command line's, loads model.pt and evaluates it on one split: loss, accuracy, errors and
the confusion matrix, computed as training computed them (the same seed's split, dtype and
device), so the run's final test metrics come out exactly. `predictions=true` also writes
RUN_DIR/predictions_<split>.csv: index in the split, label, prediction, one logit per class.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gradbench.commands import arguments
from gradbench.run import files, targets
from gradbench.columns import SPLITS
from gradbench.errors import ConfigError, choose
from gradbench.run.job import DTYPES, build, resolve_device, stream
from gradbench.run.validate import validate as check_config
from gradbench.run.train import evaluate, predict

USAGE = arguments.EVAL_USAGE


def run_config(run_dir: Path, config_dir: str | None = None) -> dict:
    """The resolved config the run trained with (summary.json's, else model.pt's), read as plain
    data (gradbench.run.files: no string holding `${`, so nothing in it is ever resolved),
    refused in one line naming the file if it is unreadable or names code to call
    (gradbench.run.targets)."""
    summary, weights = run_dir / "summary.json", run_dir / "model.pt"
    if files.exists(summary):
        config = files.read_summary(summary).get("config")
        if config:
            targets.check(config, str(summary), config_dir, prefix="config.")
            return config
    if files.exists(weights):
        config = load_model(weights, config_dir).get("config")
        if isinstance(config, dict) and config:
            return config
    raise ConfigError(f"RUN_DIR must be a gradbench run dir (a summary.json or model.pt with its config), "
                      f"got {str(run_dir)!r}")


def load_model(path: Path, config_dir: str | None) -> dict:
    """model.pt: tensors and plain data only (weights_only, gradbench.run.files), its metadata
    checked like any config read back, one line naming the file if it is no such file."""
    saved = files.load_torch(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise ConfigError(f"{path} is not a gradbench model.pt (a dict with a state_dict)")
    meta = {k: v for k, v in saved.items() if k != "state_dict"}
    files.check_data(meta, path, tensors=True)
    targets.check(meta, str(path), config_dir)
    return saved


def checked(config: dict, run_dir: Path):
    """The stored config as a DictConfig (it holds no `${`: nothing to resolve), checked against
    the run keys' rules (gradbench.run.validate.RULES; the types against conf/ need Hydra's
    composition of the run's choices, which eval does not do): a value `train` refuses is refused."""
    for key in ("dataset", "model", "seed", "dtype", "device", "eval_chunk"):
        if key not in config:
            raise ConfigError(f"{run_dir / 'summary.json'}: config has no {key!r}: not a gradbench run's config")
    cfg = OmegaConf.create(config, flags={"allow_objects": False})
    try:
        choose("dtype", cfg.dtype, DTYPES)
        check_config(cfg, reference=OmegaConf.create({}))
    except ConfigError as e:
        raise ConfigError(f"{run_dir}'s stored config: {e}") from None
    except Exception as e:  # a stored config of another shape than a composed one
        raise ConfigError(f"{run_dir}'s stored config is not a gradbench config ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return cfg


def parse(argv: list[str]) -> tuple[Path, dict]:
    if not argv:  # a mistake, not a request for help: usage on stderr, exit 2
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help"):
        arguments.print_help("eval")
        sys.exit(0)
    # --config-dir DIR: the user's own config dir the run was trained with: its `_target_`s may
    # be instantiated too (gradbench.run.targets); the same flag as on every other command
    try:
        argv, config_dir = arguments.eval_config_dir(argv)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not argv:
        raise ConfigError(f"RUN_DIR is missing: {USAGE}")
    options = {"split": "test", "predictions": "false", "device": None, "config_dir": config_dir}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in options or key == "config_dir":
            raise ConfigError(f"options must be split=... | predictions=... | device=... | --config-dir DIR, got {arg!r}")
        options[key] = value
    if options["split"] not in SPLITS:
        raise ConfigError(f"split must be one of {' | '.join(SPLITS)}, got {options['split']!r}")
    if options["predictions"] not in ("true", "false"):
        raise ConfigError(f"predictions must be true or false, got {options['predictions']!r}")
    return Path(argv[0]), options


def main(argv: list[str]) -> int:
    try:
        run_dir, options = parse(argv)
        return evaluate_run(run_dir, options["split"], options["predictions"] == "true", options["device"],
                            options["config_dir"])
    except ConfigError as e:
        print(f"gradbench eval: error: {e}", file=sys.stderr)
        return 2


def evaluate_run(run_dir: Path, split: str, predictions: bool, device: str | None,
                 config_dir: str | None = None) -> int:
    config = checked(run_config(run_dir, config_dir), run_dir)
    weights = run_dir / "model.pt"
    if not files.exists(weights):
        raise ConfigError(f"RUN_DIR has no model.pt (was it trained with save_model=false?): {run_dir}")
    state_dict = load_model(weights, config_dir)["state_dict"]
    device = resolve_device(device or config.device)
    dtype = DTYPES[config.dtype]
    # build: missing data files are the dataset's one-line error (exit 2), as in `train`
    data = build(config.dataset, "dataset", generator=stream(config.seed, "data")).to(device, dtype)
    chosen = data.splits[split]
    if not len(chosen):
        raise ConfigError(f"split {split!r} of this run is empty")
    model = build(config.model, "model", input_shape=data.input_shape, num_classes=data.num_classes)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:  # other names or shapes than the run's model
        raise ConfigError(f"{weights} does not fit the run's model ({str(e).splitlines()[0]})") from None
    model.to(device=device, dtype=dtype)
    params = {name: p.detach() for name, p in model.named_parameters()}
    metrics = evaluate(model, params, chosen, config.eval_chunk)
    print(f"{run_dir} | {split}: {len(chosen)} examples on {device}")
    print("  " + "  ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
    if data.num_classes and chosen.y is not None:
        outputs = predict(model, params, chosen.x, config.eval_chunk)
        confusion = model.confusion(outputs, chosen.y)
        names = [data.class_name(k) for k in range(data.num_classes)]
        width = max(map(len, names))
        print(f"  confusion (rows: true class, columns: predicted, in this order: {', '.join(names)}):")
        for name, row in zip(names, confusion.tolist()):
            print(f"   {name:>{width}} |" + " ".join(f"{v:>6d}" for v in row))
        if predictions:
            path = run_dir / f"predictions_{split}.csv"
            header = ["index", "label", "prediction", *(f"logit_{k}" for k in range(outputs.shape[1]))]
            lines = [",".join(header)]
            for i, (label, out) in enumerate(zip(chosen.y.tolist(), outputs.tolist())):
                lines.append(",".join(map(str, [i, label, max(range(len(out)), key=out.__getitem__),
                                                *map(repr, out)])))
            files.write_text(path, "\n".join(lines) + "\n")  # a symlink there is replaced, not followed
            print(f"→ {path}")
    return 0
