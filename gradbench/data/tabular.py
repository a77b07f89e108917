"""Small tabular datasets: Palmer penguins, a seeded synthetic toy set, and no data (test functions)."""

from __future__ import annotations

import torch

from gradbench.data import Data, Split, standardise, stratified_split
from gradbench.errors import ConfigError, require

PENGUIN_FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def _check_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    for key, f in (("dataset.val_fraction", val_fraction), ("dataset.test_fraction", test_fraction)):
        require(0 <= f < 1, key, "must be in [0, 1)", f)
    require(val_fraction + test_fraction < 1, "dataset.val_fraction + dataset.test_fraction",
            "must leave a training split (sum < 1)", val_fraction + test_fraction)
    return {"val": val_fraction, "test": test_fraction}


def _split(x: torch.Tensor, y: torch.Tensor, fractions: dict[str, float],
           generator: torch.Generator) -> dict[str, Split]:
    idx = stratified_split(y, fractions, generator)
    return {name: Split(x[i], y[i]) for name, i in idx.items()}


def penguins(generator: torch.Generator, val_fraction: float = 0.2,
             test_fraction: float = 0.2) -> Data:
    """Palmer penguins: 4 numeric features → species (Adelie 0, Chinstrap 1, Gentoo 2).

    Rows with a missing numeric feature are dropped (342 remain); the split is stratified by
    species and seeded; features are standardised with training-split statistics.
    """
    from palmerpenguins import load_penguins  # ships its CSV: no network needed

    fractions = _check_fractions(val_fraction, test_fraction)
    frame = load_penguins().dropna(subset=PENGUIN_FEATURES)
    species = frame["species"].astype("category")
    x = torch.tensor(frame[PENGUIN_FEATURES].to_numpy(), dtype=torch.float64)
    y = torch.tensor(species.cat.codes.to_numpy(), dtype=torch.long)
    splits, stats = standardise(_split(x, y, fractions, generator))
    return Data(splits, num_classes=len(species.cat.categories), class_names=list(species.cat.categories),
                preprocessing={"features": PENGUIN_FEATURES, "standardise": stats})


def toy(generator: torch.Generator, samples: int = 5, features: int = 4, classes: int = 3,
        separation: float = 1.0, val_fraction: float = 0.0, test_fraction: float = 0.0) -> Data:
    """Seeded Gaussian blobs: class c has centre μ_c ~ N(0, separation²·I), x = μ_y + N(0, I).

    Labels cycle through the classes (every class present); report 004's toy set is the
    default size: 5 samples × 4 features × 3 classes, all of them training data.
    """
    for key, value in (("samples", samples), ("features", features), ("classes", classes)):
        require(value >= 1, f"dataset.{key}", "must be >= 1", value)
    fractions = _check_fractions(val_fraction, test_fraction)
    centres = separation * torch.randn(classes, features, generator=generator, dtype=torch.float64)
    y = torch.arange(samples) % classes
    y = y[torch.randperm(samples, generator=generator)]
    x = centres[y] + torch.randn(samples, features, generator=generator, dtype=torch.float64)
    return Data(_split(x, y, fractions, generator), num_classes=classes)


def toy_inputs(generator: torch.Generator, samples: int = 1000, features: int = 3,
               x: list | None = None) -> Data:
    """Report 002's unlabelled inputs: `samples` rows of `features` (= K) entries, U(0, 1).

    Explicit rows (`dataset.x=[[...], ...]`) replace the draw. Everything is training data
    (val and test are empty); `y` is None and there are no classes.
    """
    if x is None:
        for key, value in (("samples", samples), ("features", features)):
            require(value >= 1, f"dataset.{key}", "must be >= 1", value)
        inputs = torch.rand(samples, features, generator=generator, dtype=torch.float64)
    else:
        try:
            inputs = torch.tensor([[float(v) for v in row] for row in x], dtype=torch.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"dataset.x must be a nested list of numbers (rows of equal length), got {x!r}") from None
        require(inputs.dim() == 2 and inputs.numel() > 0, "dataset.x", "must hold at least one row", x)
    empty = Split(inputs[:0])
    return Data({"train": Split(inputs), "val": empty, "test": empty}, num_classes=None)


def no_data(generator: torch.Generator) -> Data:
    """No data at all: one empty training row, for models whose loss needs none (the test
    functions of gradbench.models.functions); val and test are empty, so only train is evaluated."""
    empty = torch.zeros(0, 0)
    return Data({"train": Split(torch.zeros(1, 0)), "val": Split(empty), "test": Split(empty)}, None)
