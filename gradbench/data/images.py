"""Image datasets: MNIST and CIFAR-10 (all classes, or a subset such as report 001's car/cat).

    gradbench train dataset=mnist model=cnn
    gradbench train dataset=cifar10_carcat model=mlp data_root=/data/torchvision

torchvision downloads and parses the files into the data root, laid out as torchvision lays
them out (root/MNIST/raw/…, root/cifar-10-batches-py/…; see torchvision_files.py), so files
any torchvision program already downloaded are reused. The pixels of the splits (after class selection, split, caps
and resize: still uint8) and the training split's per-channel statistics are cached as one
.pt per setting in root/gradbench_splits/, so a later run reads one file instead of parsing
the raw ones; the conversion to normalised floats is redone on each load (a 4× smaller cache).
An optional PCA (report 004) projects onto the training split's principal components; its
basis is cached beside the pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms.v2.functional import resize

from gradbench.data import Data, Split
from gradbench.data.torchvision_files import SOURCES, Source, fetch, oneline, parse, warn_unofficial
from gradbench.errors import ConfigError, require

log = logging.getLogger(__name__)
CACHE_FOLDER = "gradbench_splits"
CACHE_VERSION = 2  # bump when the preprocessing changes, so old cache files are not read


def default_root() -> Path:
    """$GRADBENCH_DATA, else $XDG_CACHE_HOME/gradbench, else ~/.cache/gradbench."""
    if os.environ.get("GRADBENCH_DATA"):
        return Path(os.environ["GRADBENCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "gradbench"


def _select(x: Tensor, y: Tensor, names: list[str], classes: list | None) -> tuple[Tensor, Tensor, list[str]]:
    """Keep `classes` (names or indices) and relabel them 0..k-1 in the order given."""
    if classes is None:
        return x, y, names
    index = []
    for c in classes:
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            index.append(c)
        elif isinstance(c, str) and c in names:
            index.append(names.index(c))
        else:
            raise ConfigError(f"dataset.classes has an unknown class {c!r}: give names or indices of {names}")
    require(len(set(index)) == len(index) >= 2, "dataset.classes", "must name at least 2 distinct classes",
            list(classes))
    remap = torch.full((len(names),), -1, dtype=torch.long)
    remap[index] = torch.arange(len(index))
    new = remap[y]
    keep = new >= 0
    return x[keep], new[keep], [names[i] for i in index]


def _split(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], val_size: int | float,
           train_size: int | None, test_size: int | None, generator: torch.Generator) -> dict:
    """Seeded validation split from the official training set; caps on train and test.

    The val images are a seeded random subset; the capped train split is a seeded random
    subset of the rest; the capped test split is the first `test_size` official test images,
    the same for every seed, so runs with different seeds are scored on the same images.
    """
    n = len(train[1])
    n_val = round(val_size * n) if isinstance(val_size, float) else val_size
    require(n_val < n, "dataset.val_size", f"must leave training images (the training set has {n})", val_size)
    require(train_size is None or train_size <= n - n_val, "dataset.train_size",
            f"must be <= the {n - n_val} training images left after the validation split", train_size)
    require(test_size is None or test_size <= len(test[1]), "dataset.test_size",
            f"must be <= the {len(test[1])} test images", test_size)
    perm = torch.randperm(n, generator=generator)
    idx = {"train": perm[n_val:][:train_size].sort().values, "val": perm[:n_val].sort().values}
    out = {name: (train[0][i], train[1][i]) for name, i in idx.items()}
    out["test"] = (test[0][:test_size], test[1][:test_size])
    return out


def _cache_path(source: Source, root: Path, settings: dict, state: Tensor) -> Path:
    """One file per content: the settings, the split stream's state and the raw files' stats."""
    folder = root / source.folder
    files = [[f, s.st_size, s.st_mtime_ns] for f in source.files if (folder / f).is_file()
             for s in [(folder / f).stat()]]
    key = {"version": CACHE_VERSION, "source": source.name, **settings, "files": files,
           "split_stream": hashlib.sha256(state.numpy().tobytes()).hexdigest()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / CACHE_FOLDER / f"{source.name}-{digest}.pt"


def _write_cache(path: Path, content: dict) -> None:
    """Atomic write (parallel jobs may race on the same file); a read-only root just skips it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(content, tmp)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache the splits in %s (%s); the next run parses the raw files again", path, e)


def _read_cache(path: Path, generator: torch.Generator, settings: dict) -> dict | None:
    """The cached splits, if the file is readable AND holds what this setting needs: the
    settings it was built for, uint8 images with int64 labels in range, matching lengths.
    Anything else is named in a warning and rebuilt, never used and never a crash."""
    if not path.is_file():
        return None
    try:
        content = torch.load(path, weights_only=True)
        problem = _cache_problem(content, settings)
    except Exception as e:  # e.g. a file cut short by a full disk: rebuild it
        problem = f"unreadable ({oneline(e)})"
    if problem:
        log.warning("split cache %s: %s; parsing the raw files again and rewriting it", path, problem)
        return None
    generator.set_state(content["generator_after"])  # as if the split had just been drawn
    log.info("splits from the cache %s", path)
    return content


def _cache_problem(content, settings: dict) -> str | None:
    """What is wrong with a cache file's content for `settings`, or None."""
    if not isinstance(content, dict) or not {"splits", "classes", "stats", "generator_after"} <= set(content):
        return "not a gradbench split cache"
    if content.get("settings") != settings:
        return f"built for other settings ({content.get('settings')})"
    for name, (x, y) in content["splits"].items():
        if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or len(x) != len(y):
            return f"split {name!r} is not N×C×H×W uint8 images with N int64 labels"
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(content["classes"]):
            return f"split {name!r} has labels outside 0..{len(content['classes']) - 1}"
    return None


def _build(source: Source, root: Path, settings: dict, generator: torch.Generator) -> dict:
    """Parse the raw files, then select classes, split, cap and resize (uint8 throughout)."""
    warn_unofficial(source, root)
    (x, y, names), test = parse(source, root, train=True), parse(source, root, train=False)
    x, y, kept = _select(x, y, names, settings["classes"])
    test_x, test_y, _ = _select(*test, settings["classes"])
    splits = _split((x, y), (test_x, test_y), settings["val_size"], settings["train_size"],
                    settings["test_size"], generator)
    if settings["resize"] is not None:  # antialiased, on uint8 as PIL would: report 001's 16×16
        size = [settings["resize"]] * 2
        splits = {k: (resize(sx, size, antialias=True), sy) for k, (sx, sy) in splits.items()}
    return {"splits": splits, "classes": kept, "stats": channel_stats(splits["train"][0]),
            "generator_after": generator.get_state(), "settings": settings}


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased std of uint8 images N×C×H×W as pixels/255, in float64,
    counted exactly from a 256-bin histogram per channel (no float copy of the images)."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(x[:, c].flatten(), minlength=256) for c in range(x.shape[1])]).double()
    n = counts.sum(1)
    mean = counts @ levels / n
    std = ((counts * (levels - mean[:, None]) ** 2).sum(1) / (n - 1)).sqrt().clamp_min(1e-12)
    return mean, std


def normalise_splits(splits: dict, stats: tuple[Tensor, Tensor] | None, flatten: bool) -> dict[str, Split]:
    """uint8 → float32 pixels/255, then per channel (x − mean) / std with the training
    split's `stats` (None: left in [0, 1]); in place, since fresh large tensors are slow."""
    mean, std = stats if stats is not None else (torch.zeros(1), torch.ones(1))
    shift, scale = (255 * mean).float().view(1, -1, 1, 1), (255 * std).float().view(1, -1, 1, 1)
    out = {}
    for name, (sx, sy) in splits.items():
        sx = sx.float().sub_(shift).div_(scale)
        out[name] = Split(sx.flatten(1) if flatten else sx, sy)
    return out


def fit_pca(x: Tensor, variance: float, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Principal components of the rows of `x` (N × D) that keep a share `variance` of their
    total variance: (mean D, basis D × k, columns by decreasing variance). The covariance is
    summed in float64 over chunks of float32 products, then eigendecomposed in float64."""
    mean = x.mean(0, dtype=torch.float64)
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for part in x.split(chunk):
        centred = part - mean.float()
        cov += (centred.T @ centred).double()
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    k = min(int((values.cumsum(0) / values.sum() < variance).sum()) + 1, x.shape[1])
    return mean.float(), vectors[:, :k].float().contiguous()


def _project(splits: dict[str, Split], path: Path, variance: float) -> tuple[dict[str, Split], Tensor, Tensor]:
    """Every split onto the training split's principal components (basis cached in `path`);
    returns the projected splits, the mean and the basis."""
    try:
        mean, basis = torch.load(path, weights_only=True)["pca"]
    except Exception:  # not there yet (or unreadable): fit it
        mean, basis = fit_pca(splits["train"].x.flatten(1), variance)
        _write_cache(path, {"pca": (mean, basis)})
    offset = mean @ basis  # (x − mean)·B = x·B − mean·B, without a centred copy of x
    return {k: Split(s.x.flatten(1) @ basis - offset, s.y) for k, s in splits.items()}, mean, basis


def load(source: Source, generator: torch.Generator, root: str | None, classes: list | None,
         resize: int | None, val_size: int | float, train_size: int | None, test_size: int | None,
         normalise: bool, flatten: bool, pca_variance: float | None = None) -> Data:
    """The splits of `source` as normalised float32 tensors (on the CPU; the job moves them)."""
    require(isinstance(val_size, (int, float)) and not isinstance(val_size, bool) and
            (val_size >= 0 if isinstance(val_size, int) else 0 <= val_size < 1), "dataset.val_size",
            "must be a count (int >= 0) or a fraction (float in [0, 1))", val_size)
    require(train_size is None or train_size >= 1, "dataset.train_size", "must be >= 1 or null", train_size)
    require(test_size is None or test_size >= 0, "dataset.test_size", "must be >= 0 or null", test_size)
    require(resize is None or resize >= 1, "dataset.resize", "must be >= 1 or null", resize)
    require(pca_variance is None or 0 < pca_variance <= 1, "dataset.pca_variance", "must be in (0, 1] or null",
            pca_variance)
    root_path = Path(root).expanduser() if root else default_root()
    settings = {"classes": None if classes is None else list(classes), "resize": resize,
                "val_size": val_size, "train_size": train_size, "test_size": test_size}
    fetch(source, root_path)
    path = _cache_path(source, root_path, settings, generator.get_state())
    content = _read_cache(path, generator, settings)
    if content is None:
        content = _build(source, root_path, settings, generator)
        _write_cache(path, content)
    splits = normalise_splits(content["splits"], content["stats"] if normalise else None, flatten)
    # raw uint8 images → model inputs, step by step (model.pt keeps this for new images)
    preprocessing = {"resize": resize, "scale": 1 / 255}
    if normalise:
        preprocessing["normalise"] = {"mean": content["stats"][0].tolist(), "std": content["stats"][1].tolist()}
    preprocessing["flatten"] = flatten
    if pca_variance is not None:  # report 004: the basis depends on the pixels, normalisation and share
        pca_path = path.with_name(f"{path.stem}-pca-{pca_variance}-{normalise:d}.pt")
        splits, mean, basis = _project(splits, pca_path, pca_variance)
        preprocessing["pca"] = {"mean": mean, "basis": basis}  # x_model = (x − mean) @ basis
    return Data(splits, num_classes=len(content["classes"]), class_names=list(content["classes"]),
                preprocessing=preprocessing)


def mnist(generator: torch.Generator, root: str | None = None, classes: list | None = None,
          resize: int | None = None, val_size: int | float = 5000, train_size: int | None = None,
          test_size: int | None = None, normalise: bool = True, flatten: bool = False,
          pca_variance: float | None = None) -> Data:
    """MNIST: 28×28 grey handwritten digits, 10 classes, 60 000 official train / 10 000 test."""
    return load(SOURCES["mnist"], generator, root, classes, resize, val_size, train_size,
                test_size, normalise, flatten, pca_variance)


def cifar10(generator: torch.Generator, root: str | None = None, classes: list | None = None,
            resize: int | None = None, val_size: int | float = 5000, train_size: int | None = None,
            test_size: int | None = None, normalise: bool = True, flatten: bool = False,
            pca_variance: float | None = None) -> Data:
    """CIFAR-10: 32×32 colour images, 10 classes, 50 000 official train / 10 000 test;
    `classes` keeps a subset (report 001: [automobile, cat] → 0, 1), `resize` shrinks them,
    `pca_variance` projects onto principal components (report 004: 0.95)."""
    return load(SOURCES["cifar10"], generator, root, classes, resize, val_size, train_size,
                test_size, normalise, flatten, pca_variance)
