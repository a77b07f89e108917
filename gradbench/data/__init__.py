"""Datasets as device-resident tensors, and batches drawn from them by index.

Every loader returns a `Data`: the train / val / test splits already on the run's device,
plus the shape glue the model needs (input shape, number of classes). Nothing here loops
over samples in Python: a batch is `x[idx]` for a slice `idx` of a seeded permutation.

    __init__.py           Data, Split, batches, standardisation and stratified splits
    tabular.py            Palmer penguins, the seeded toy sets, no data (test functions)
    images.py             MNIST and CIFAR-10 (all classes or a subset), cached preprocessed splits
    torchvision_files.py  raw image files through torchvision: where they live, download, parsing
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

from gradbench.columns import SPLITS


@dataclass
class Split:
    """One split: inputs `x` (N × ...) and integer labels `y` (N), or `y=None` if unlabelled."""

    x: Tensor
    y: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx: Tensor) -> Split:
        return Split(self.x[idx], None if self.y is None else self.y[idx])

    def to(self, device: torch.device, dtype: torch.dtype) -> Split:
        y = None if self.y is None else self.y.to(device)
        return Split(self.x.to(device=device, dtype=dtype), y)


@dataclass
class Data:
    """The splits of one dataset plus what a model needs to know about their shape, the class
    names, and how raw inputs became the model's inputs (saved in model.pt, so a later user can
    apply the same preprocessing to new raw inputs)."""

    splits: dict[str, Split]
    num_classes: int | None  # None for unlabelled data
    class_names: list[str] | None = None  # label i is class_names[i] (None: the numbers themselves)
    preprocessing: dict = field(default_factory=dict)  # step → its statistics, in the order applied
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.input_shape = tuple(self.splits["train"].x.shape[1:])

    @property
    def train(self) -> Split:
        return self.splits["train"]

    def to(self, device: torch.device, dtype: torch.dtype) -> Data:
        return Data({k: s.to(device, dtype) for k, s in self.splits.items()}, self.num_classes, self.class_names,
                    self.preprocessing)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names else str(label)


class BatchOrder:
    """Endless index batches: epoch after epoch, a fresh permutation cut into `batch_size` slices.

    The permutation is drawn on the CPU generator and moved to the device once per epoch, so
    the batch order depends on the seed alone, not on the device. The last batch of an epoch
    may be smaller (as DataLoader's default, drop_last=False). Full batch = no shuffle. Its
    state (the generator before this epoch's draw, the slices taken) goes into checkpoints.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self.everything = torch.arange(n, device=device) if batch_size >= n else None
        self.epoch_state: Tensor | None = None
        self.slices: tuple[Tensor, ...] = ()
        self.position = 0

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> Tensor:
        if self.everything is not None:
            return self.everything
        if self.position == len(self.slices):
            self.epoch_state = self.generator.get_state()
            self._draw()
        self.position += 1
        return self.slices[self.position - 1]

    def _draw(self) -> None:
        self.slices = torch.randperm(self.n, generator=self.generator).to(self.device).split(self.batch_size)
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch_state": self.epoch_state, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["epoch_state"] is not None:
            self.epoch_state = state["epoch_state"]
            self.generator.set_state(self.epoch_state)
            self._draw()
            self.position = state["position"]


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> BatchOrder:
    """Endless index batches (see BatchOrder)."""
    return BatchOrder(n, batch_size, generator, device)


def stratified_split(
    y: Tensor, fractions: dict[str, float], generator: torch.Generator
) -> dict[str, Tensor]:
    """Seeded stratified split of indices: each class is cut by the same `fractions` of val/test.

    Returns index tensors for every split in SPLITS; `train` gets what val and test leave.
    """
    parts: dict[str, list[Tensor]] = {name: [] for name in SPLITS}
    for label in torch.unique(y):  # one iteration per class, not per sample
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for name in ("test", "val"):
            count = round(fractions.get(name, 0.0) * len(members))
            parts[name].append(members[start : start + count])
            start += count
        parts["train"].append(members[start:])
    return {name: torch.cat(idx).sort().values for name, idx in parts.items()}


def standardise(splits: dict[str, Split]) -> tuple[dict[str, Split], dict]:
    """Scale features to zero mean, unit variance using training-split statistics only; returns
    the splits and the statistics ({mean, std}: x_model = (x_raw − mean) / std)."""
    x = splits["train"].x
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    return {k: Split((s.x - mean) / std, s.y) for k, s in splits.items()}, {"mean": mean.tolist(), "std": std.tolist()}
