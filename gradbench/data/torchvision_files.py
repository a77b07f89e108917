"""Raw image-dataset files through torchvision: where they live, download, parsing, clear errors.

torchvision keeps each dataset under a data root as it lays it out (root/MNIST/raw/…,
root/cifar-10-batches-py/…); `fetch` makes sure the files are there (unpacking or letting
torchvision download them), `parse` reads one official split through torchvision. Missing,
truncated or corrupt files become a `DataError` naming the root, the file and the remedy.

torchvision accepts only files with the official md5s; gradbench accepts any files in the
right format (the tests' small fixtures, a re-encoded copy), in two documented places:
`_CIFAR10` (existence instead of md5) and `_gunzip_mnist` (unpacking .gz files that
torchvision would download afresh). Files that are not the official ones are logged.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import check_integrity, extract_archive

from gradbench.errors import ConfigError

log = logging.getLogger(__name__)


class DataError(ConfigError):
    """Data files missing or unreadable: the CLI prints the message (no traceback), exit 2."""


class _CIFAR10(CIFAR10):
    """torchvision's CIFAR10 with its md5 checks reduced to "the file exists".

    torchvision compares every batch with the official md5, so any other files (the tests'
    small fixtures, a re-encoded copy) would send it to download afresh. Download (tar.gz still md5-checked) and parsing are
    torchvision's own; a corrupt batch is named by `parse` when parsing fails, and files that
    differ from the official ones are reported by `warn_unofficial`.
    """

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


def _gunzip_mnist(folder: Path) -> None:
    """Unpack MNIST .gz files that have no unpacked twin (a manual copy, or files whose md5
    torchvision would reject), with torchvision's extract_archive; a bad .gz is named.
    Unpacked in a private temporary folder, then moved: parallel jobs never see half a file."""
    for archive, _ in MNIST.resources:
        target = folder / archive.removesuffix(".gz")
        if (folder / archive).is_file() and not target.exists():
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                try:
                    extract_archive(str(folder / archive), tmp)
                except Exception as e:
                    raise _corrupt(folder / archive, e) from None
                os.replace(Path(tmp) / target.name, target)


def _read_mnist_file(path: Path) -> Tensor:
    return (read_label_file if "labels" in path.name else read_image_file)(str(path))


def _read_pickle(path: Path) -> object:
    with open(path, "rb") as f:  # the same call torchvision's CIFAR10 makes for each batch
        return pickle.load(f, encoding="latin1")


@dataclass(frozen=True)
class Source:
    """Where torchvision keeps one dataset under the root, and how to read it."""

    name: str
    folder: str                  # relative to the root, as torchvision lays it out
    files: tuple[str, ...]       # the files torchvision parses, relative to `folder`
    official: dict[str, str]     # file → official md5, to flag files that are not the originals
    dataset: type                # torchvision dataset class: download + parsing
    arrays: Callable             # torchvision dataset → (x uint8 N×C×H×W, y int64 N)
    probe: Callable[[Path], object]  # reads one file alone, to name a broken one
    alternative: str = ""        # other acceptable form of the files, for the error message
    prepare: Callable[[Path], None] = lambda folder: None


SOURCES = {
    "mnist": Source(
        "mnist", "MNIST/raw", tuple(a.removesuffix(".gz") for a, _ in MNIST.resources),
        dict(MNIST.resources), MNIST, lambda ds: (ds.data[:, None], ds.targets),
        _read_mnist_file, alternative="each may also be its .gz", prepare=_gunzip_mnist),
    "cifar10": Source(
        "cifar10", CIFAR10.base_folder,
        tuple(n for n, _ in CIFAR10.train_list + CIFAR10.test_list) + (CIFAR10.meta["filename"],),
        {n: m for n, m in CIFAR10.train_list + CIFAR10.test_list}, _CIFAR10,
        lambda ds: (torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)),
        _read_pickle, alternative=f"or instead the archive {CIFAR10.filename} in the root, which torchvision unpacks"),
}


def _corrupt(path: Path, error: Exception) -> DataError:
    return DataError(
        f"cannot read {path}: {type(error).__name__}: {oneline(error)}. The file is corrupt or "
        "truncated: delete it and run again with network access (torchvision downloads it afresh), "
        "or copy an intact copy in.")


def oneline(error: Exception, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit]


def fetch(source: Source, root: Path) -> None:
    """Make sure the raw files are in `root`: unpack what is there, else let torchvision download."""
    source.prepare(root / source.folder)
    def missing() -> list[str]:
        return [f for f in source.files if not (root / source.folder / f).is_file()]

    if not missing():
        return
    try:
        source.dataset(str(root), train=True, download=True)
    except Exception as e:
        if missing():
            folder = source.folder
            raise DataError(
                f"{source.name} is not in the data root {root} and could not be downloaded "
                f"({type(e).__name__}: {oneline(e)}); missing: {', '.join(f'{folder}/{f}' for f in missing())}"
                f"{'; ' + source.alternative if source.alternative else ''}; to get them: run once with network "
                "access (torchvision downloads them there), copy the files in from a machine that has them, "
                "or point data_root (or $GRADBENCH_DATA) at a folder that holds them") from None
        # the files arrived: any parse error is reported by `parse`


def parse(source: Source, root: Path, train: bool) -> tuple[Tensor, Tensor, list[str]]:
    """One official split through torchvision: (x uint8 N×C×H×W, y int64 N, class names)."""
    try:
        ds = source.dataset(str(root), train=train, download=False)
        x, y = source.arrays(ds)
        return x.contiguous(), y.long(), list(ds.classes)
    except Exception as e:
        for f in source.files:  # name the broken file: read each alone with the same reader
            try:
                source.probe(root / source.folder / f)
            except Exception as file_error:
                raise _corrupt(root / source.folder / f, file_error) from None
        raise DataError(
            f"cannot read {source.name} from {root / source.folder} ({type(e).__name__}: "
            f"{oneline(e)}): one of {', '.join(source.files)} is corrupt or not in the "
            "expected format. Delete the folder and run again with network access, or copy "
            "intact files in.") from None


def warn_unofficial(source: Source, root: Path) -> None:
    folder = root / source.folder
    odd = [f for f, md5 in source.official.items() if (folder / f).is_file() and not check_integrity(str(folder / f), md5)]
    if odd:
        log.warning("%s: %s differ from the official files (md5); used as they are", folder, ", ".join(odd))
