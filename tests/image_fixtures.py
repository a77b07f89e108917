"""Small MNIST and CIFAR-10 files in the real on-disk formats, for tests (never the real sets).

    from image_fixtures import write_mnist, write_cifar10
    arrays = write_mnist(tmp_path, n_train=200, n_test=50, seed=0)   # tmp_path/MNIST/raw/*.gz
    arrays = write_cifar10(tmp_path, n_per_batch=20, seed=0)         # tmp_path/cifar-10-batches-py/

The files are laid out and encoded exactly as torchvision expects them: MNIST as gzipped
big-endian idx-ubyte files, CIFAR-10 as Python pickles of dicts with `data` (N × 3072 uint8,
channel-major rows) and `labels`. Only their checksums differ from the official files.
Pixels are class templates plus noise, so a model can learn them. Each writer returns the
arrays it wrote: {"train": (x uint8 N×C×H×W, y int64 N), "test": (...)}, in file order.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def make_images(n: int, shape: tuple[int, int, int], classes: int, rng: np.random.Generator,
                templates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images: each class a fixed random template plus pixel noise; labels cycle the classes."""
    if templates is None:
        templates = rng.uniform(30, 225, size=(classes, *shape))
    y = rng.permutation(np.arange(n) % classes)
    x = templates[y] + rng.normal(0, 25, size=(n, *shape))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64), templates


def _idx(array: np.ndarray) -> bytes:
    """idx-ubyte encoding: magic 0x0000 08 <ndim>, big-endian uint32 sizes, then the bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(root: str | Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict:
    """Write root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (28×28 grey, 10 classes)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays, templates = {}, None
    for split, n in (("train", n_train), ("test", n_test)):
        x, y, templates = make_images(n, (1, 28, 28), 10, rng, templates)
        images, labels = MNIST_FILES[split]
        (raw / f"{images}.gz").write_bytes(gzip.compress(_idx(x[:, 0])))
        (raw / f"{labels}.gz").write_bytes(gzip.compress(_idx(y.astype(np.uint8))))
        arrays[split] = (torch.from_numpy(x), torch.from_numpy(y))
    return arrays


def write_cifar10(root: str | Path, n_per_batch: int = 20, seed: int = 0, n_test: int | None = None) -> dict:
    """Write root/cifar-10-batches-py/: data_batch_1..5 (n_per_batch images each), test_batch
    (n_test, default n_per_batch) and batches.meta, as protocol-2 pickles like the originals."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)]
    batches.append(("test_batch", n_per_batch if n_test is None else n_test))
    xs: dict[str, list] = {"train": [], "test": []}
    ys: dict[str, list] = {"train": [], "test": []}
    templates = None
    for name, n in batches:
        x, y, templates = make_images(n, (3, 32, 32), 10, rng, templates)
        entry = {"batch_label": f"fixture {name}", "labels": y.tolist(),
                 "data": x.reshape(n, 3072), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        split = "test" if name == "test_batch" else "train"
        xs[split].append(x)
        ys[split].append(y)
    meta = {"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {s: (torch.from_numpy(np.concatenate(xs[s])), torch.from_numpy(np.concatenate(ys[s])))
            for s in xs}
