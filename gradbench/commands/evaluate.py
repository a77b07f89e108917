"""`gradbench eval RUN_DIR [split=test] [predictions=true] [device=cpu] [--config-dir DIR]`: a trained model, again.

Rebuilds the data split and the model from the run's own resolved config (summary.json, else
.hydra/config.yaml), loads model.pt and evaluates it on one split: loss, accuracy, errors and
the confusion matrix, computed as training computed them (the same seed's split, dtype and
device), so the run's final test metrics come out exactly. `predictions=true` also writes
RUN_DIR/predictions_<split>.csv: index in the split, label, prediction, one logit per class.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gradbench.commands import arguments
from gradbench.run import targets
from gradbench.columns import SPLITS
from gradbench.errors import ConfigError
from gradbench.run.job import DTYPES, build, resolve_device, stream
from gradbench.run.train import evaluate, predict

USAGE = arguments.EVAL_USAGE


def run_config(run_dir: Path, config_dir: str | None = None) -> dict:
    """The resolved config the run trained with, refused in one line naming the file if it is
    unreadable or names code to call (a run dir is data: gradbench.run.targets)."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            stored = json.loads(summary.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{summary} is unreadable ({str(e).splitlines()[0]})") from None
        if not isinstance(stored, dict) or not isinstance(stored.get("config", {}), dict):
            raise ConfigError(f"{summary} is not a gradbench summary (a JSON object with a config)")
        if stored.get("config"):
            targets.check(stored["config"], str(summary), config_dir, prefix="config.")
            return stored["config"]
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        try:
            config = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
        except Exception as e:  # YAML or OmegaConf's own errors
            raise ConfigError(f"{saved} is unreadable ({str(e).splitlines()[0]})") from None
        targets.check(config, str(saved), config_dir)  # before resolving: no resolver runs unchecked
        try:
            return OmegaConf.to_container(OmegaConf.create(config), resolve=True)
        except Exception as e:
            raise ConfigError(f"{saved} does not resolve ({str(e).splitlines()[0]})") from None
    raise ConfigError(f"RUN_DIR must be a gradbench run dir (summary.json or .hydra/config.yaml), got {str(run_dir)!r}")


def load_weights(path: Path, config_dir: str | None) -> dict:
    """model.pt's state_dict: tensors and plain data only (weights_only), its metadata checked
    like any config read back, one line naming the file if it is no such file."""
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as e:  # truncated, not a zip, a pickle of other objects: torch's many errors
        raise ConfigError(f"{path} is unreadable ({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise ConfigError(f"{path} is not a gradbench model.pt (a dict with a state_dict)")
    targets.check({k: v for k, v in saved.items() if k != "state_dict"}, str(path), config_dir)
    return saved["state_dict"]


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
    config = OmegaConf.create(run_config(run_dir, config_dir))
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"RUN_DIR has no model.pt (was it trained with save_model=false?): {run_dir}")
    state_dict = load_weights(weights, config_dir)
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
            path.write_text("\n".join(lines) + "\n")
            print(f"→ {path}")
    return 0
