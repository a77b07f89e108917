"""`gradbench eval RUN_DIR [split=test] [predictions=true] [device=cpu]`: a trained model, again.

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
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradbench.columns import SPLITS
from gradbench.errors import ConfigError
from gradbench.job import DTYPES, resolve_device, stream
from gradbench.train import evaluate, predict

USAGE = "usage: gradbench eval RUN_DIR [split=test|val|train] [predictions=true|false] [device=...]"


def run_config(run_dir: Path) -> dict:
    """The resolved config the run trained with."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        config = json.loads(summary.read_text()).get("config")
        if config:
            return config
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        return OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    raise ConfigError(f"RUN_DIR must be a gradbench run dir (summary.json or .hydra/config.yaml), got {str(run_dir)!r}")


def parse(argv: list[str]) -> tuple[Path, dict]:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.split("\n\n", 1)[1])
        sys.exit(0)
    options = {"split": "test", "predictions": "false", "device": None}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            raise ConfigError(f"options must be {' | '.join(f'{k}=...' for k in options)}, got {arg!r}")
        options[key] = value
    if options["split"] not in SPLITS:
        raise ConfigError(f"split must be one of {' | '.join(SPLITS)}, got {options['split']!r}")
    if options["predictions"] not in ("true", "false"):
        raise ConfigError(f"predictions must be true or false, got {options['predictions']!r}")
    return Path(argv[0]), options


def main(argv: list[str]) -> int:
    try:
        run_dir, options = parse(argv)
        return evaluate_run(run_dir, options["split"], options["predictions"] == "true", options["device"])
    except ConfigError as e:
        print(f"gradbench eval: error: {e}", file=sys.stderr)
        return 2


def evaluate_run(run_dir: Path, split: str, predictions: bool, device: str | None) -> int:
    config = OmegaConf.create(run_config(run_dir))
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"RUN_DIR has no model.pt (was it trained with save_model=false?): {run_dir}")
    device = resolve_device(device or config.device)
    dtype = DTYPES[config.dtype]
    data = instantiate(config.dataset, generator=stream(config.seed, "data")).to(device, dtype)
    chosen = data.splits[split]
    if not len(chosen):
        raise ConfigError(f"split {split!r} of this run is empty")
    model = instantiate(config.model, input_shape=data.input_shape, num_classes=data.num_classes)
    model.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
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
