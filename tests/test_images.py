"""Image datasets and the CNN, end to end on small files in the real MNIST / CIFAR-10 formats.

The fixture files (tests/image_fixtures.py) sit in a temporary data root exactly where
torchvision looks for them; downloads are simulated as failing (offline), never attempted.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from image_fixtures import write_cifar10, write_mnist
from torch.func import grad, jvp
from torchvision.transforms.v2.functional import resize

from gradbench.cli import CONF
from gradbench.data import images
from gradbench.data.images import cifar10, mnist
from gradbench.errors import ConfigError
from gradbench.estimators import Forward
from gradbench.models import Objective
from gradbench.models.cnn import CNN

from conftest import FAST, load_run

OPTIMIZERS = sorted(p.stem for p in (Path(CONF) / "optimizer").glob("*.yaml"))
REPORT_000_CNN_PARAMS = (1 * 2 * 9 + 2) + (2 * 4 * 9 + 4) + (784 * 64 + 64) + (64 * 10 + 10)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def offline(monkeypatch):
    """Every torchvision download fails as it does without network."""
    def refuse(url, *args, **kwargs):
        raise URLError("simulated offline")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)


@pytest.fixture
def parse_calls(monkeypatch) -> list[str]:
    """Records every construction of torchvision's MNIST / CIFAR10 (= a parse of the raw files)."""
    calls: list[str] = []
    for cls in (torchvision.datasets.MNIST, torchvision.datasets.CIFAR10):
        def counting(self, *args, _init=cls.__init__, **kwargs):
            calls.append(type(self).__name__)
            return _init(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", counting)
    return calls


def rows(x: torch.Tensor) -> list[bytes]:
    return [bytes(r) for r in x.flatten(1).numpy()]


def raw_indices(split_x: torch.Tensor, raw_x: torch.Tensor) -> torch.Tensor:
    """Which fixture images (by index) a split with normalise=false holds, in order."""
    where = {r: i for i, r in enumerate(rows(raw_x))}
    pixels = (split_x * 255).round().to(torch.uint8)
    return torch.tensor([where[r] for r in rows(pixels)], dtype=torch.long)


def normalised(x: torch.Tensor, train_x: torch.Tensor) -> torch.Tensor:
    """float64 reference: per-channel (x/255 − mean) / std with the train images' statistics."""
    t = train_x.double() / 255
    mean, std = t.mean((0, 2, 3), keepdim=True), t.std((0, 2, 3), keepdim=True)
    return (x.double() / 255 - mean) / std


# ---------------------------------------------------------------- end to end through the CLI

def test_mnist_cnn_forward_trains(runner, tmp_path):
    root = tmp_path / "data"
    write_mnist(root, n_train=84, n_test=30)
    [run] = runner("train", "dataset=mnist", f"dataset.root={root}", "dataset.val_size=20",
                   "model=cnn", "estimator=forward", "optimizer.lr=0.03", "max_steps=20", *FAST)
    frame, summary = load_run(run)
    assert summary["stop_reason"] == "max_steps"
    assert summary["num_params"] == REPORT_000_CNN_PARAMS  # fc 784 → 64: shapes as report 000
    assert summary["final"]["train"]["loss"] < summary["initial"]["train"]["loss"] - 0.02
    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["input_shape"] == [1, 28, 28] and saved["num_classes"] == 10
    assert torch.tensor(summary["test_confusion"]).sum() == 30


def test_cifar10_carcat_mlp_trains(runner, tmp_path):
    root = tmp_path / "data"
    arrays = write_cifar10(root, n_per_batch=40)
    n_test = int(torch.isin(arrays["test"][1], torch.tensor([1, 3])).sum())
    [run] = runner("train", "dataset=cifar10_carcat", f"dataset.root={root}", "model=mlp",
                   "estimator=backward", "optimizer.lr=0.1", "max_steps=15", *FAST)
    _, summary = load_run(run)
    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["input_shape"] == [3, 16, 16] and saved["num_classes"] == 2
    assert summary["num_params"] == 768 * 64 + 64 + 64 * 8 + 8 + 8 * 2 + 2
    assert torch.tensor(summary["test_confusion"]).shape == (2, 2)
    assert torch.tensor(summary["test_confusion"]).sum() == n_test
    assert summary["final"]["train"]["loss"] < 0.5 * summary["initial"]["train"]["loss"]


def test_cifar10_cnn_trains(runner, tmp_path):
    root = tmp_path / "data"
    write_cifar10(root, n_per_batch=16)
    [run] = runner("train", "dataset=cifar10", f"dataset.root={root}", "dataset.val_size=0.25",
                   "model=cnn", "estimator=backward", "optimizer=adam", "optimizer.lr=0.01",
                   "batch_size=20", "max_steps=12", *FAST)
    _, summary = load_run(run)
    saved = torch.load(run / "model.pt", weights_only=True)
    assert saved["input_shape"] == [3, 32, 32] and saved["num_classes"] == 10
    assert summary["num_params"] == (3 * 2 * 9 + 2) + (2 * 4 * 9 + 4) + (4 * 16 * 16 * 64 + 64) + 650
    assert summary["final"]["train"]["loss"] < summary["initial"]["train"]["loss"] - 0.1


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("estimator", ["forward", "backward"])
def test_cnn_every_optimizer_and_estimator(runner, tmp_path, optimizer, estimator):
    root = tmp_path / "data"
    write_mnist(root, n_train=24, n_test=8)
    [run] = runner("train", "dataset=mnist", f"dataset.root={root}", "dataset.val_size=4", "model=cnn",
                   f"estimator={estimator}", f"optimizer={optimizer}", "max_steps=2", "save_model=false", *FAST)
    _, summary = load_run(run)
    assert summary["stop_reason"] == "max_steps" and math.isfinite(summary["final"]["train"]["loss"])


def test_cnn_with_four_tangents(runner, tmp_path):
    root = tmp_path / "data"
    write_mnist(root, n_train=24, n_test=8)
    [run] = runner("train", "dataset=mnist", f"dataset.root={root}", "dataset.val_size=4", "model=cnn",
                   "estimator=forward", "estimator.num_tangents=4", "max_steps=3", *FAST)
    _, summary = load_run(run)
    assert summary["estimator"]["num_tangents"] == 4 and summary["stop_reason"] == "max_steps"
    # What K = 4 does, not its echo: the estimate averages 4 tangents, so its error is a quarter
    # of one tangent's. On a small CNN in float64, R = 200 estimates: ‖g − ∇L‖² over its
    # expectation (E‖g₁‖² − ‖∇L‖²)/K (Forward.spread) has mean 1 within 4 standard errors
    # (sample std / √R); one tangent would give a mean near K = 4, some 20 standard errors away.
    model = CNN((1, 8, 8), 10, channels=[4, 2], pool_after=[2], hidden=[6])
    model.initialise(torch.Generator().manual_seed(0))
    model.double()
    generator = torch.Generator().manual_seed(1)
    objective = Objective(model, torch.randn(16, 1, 8, 8, generator=generator, dtype=torch.float64),
                          torch.randint(0, 10, (16,), generator=generator))
    params = {k: p.detach() for k, p in model.named_parameters()}
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    t = torch.cat([g.flatten() for g in torch.autograd.grad(objective.loss(leaves), list(leaves.values()))])
    forward = Forward(num_tangents=4, generator=torch.Generator().manual_seed(2))
    expected = forward.spread(objective, params, dict(zip(params, t.split([p.numel() for p in params.values()])))) \
        .variance * t.square().sum().item()
    ratios = torch.stack([(torch.cat([g.flatten() for g in forward(objective, params)[1].values()]) - t).square().sum()
                          / expected for _ in range(200)])
    assert abs(ratios.mean().item() - 1) < 4 * ratios.std().item() / math.sqrt(len(ratios)), ratios.mean().item()


# ---------------------------------------------------------------- splits, classes, normalisation

def test_carcat_relabel_resize_and_train_statistics(tmp_path):
    """With no val split, train = every car and cat of the official train set, test = those of
    the test set; both resized to 16×16 and normalised with the train images' statistics."""
    arrays = write_cifar10(tmp_path, n_per_batch=30)
    data = cifar10(gen(), root=str(tmp_path), classes=["automobile", "cat"], resize=16, val_size=0)
    assert data.input_shape == (3, 16, 16) and data.num_classes == 2 and len(data.splits["val"]) == 0
    (x, y), (tx, ty) = arrays["train"], arrays["test"]
    keep, tkeep = torch.isin(y, torch.tensor([1, 3])), torch.isin(ty, torch.tensor([1, 3]))
    small, tsmall = resize(x[keep], [16, 16], antialias=True), resize(tx[tkeep], [16, 16], antialias=True)
    train_idx = raw_indices(cifar10(gen(), root=str(tmp_path), classes=["automobile", "cat"], resize=16,
                                    val_size=0, normalise=False).train.x, small)
    assert sorted(train_idx.tolist()) == list(range(int(keep.sum())))
    assert torch.equal(data.train.y, (y[keep][train_idx] == 3).long())  # automobile → 0, cat → 1
    torch.testing.assert_close(data.train.x.double(), normalised(small[train_idx], small), rtol=0, atol=1e-5)
    test = data.splits["test"]
    assert torch.equal(test.y, (ty[tkeep] == 3).long())  # official order
    torch.testing.assert_close(test.x.double(), normalised(tsmall, small), rtol=0, atol=1e-5)


def test_seeded_validation_split_and_train_only_statistics(tmp_path):
    arrays = write_mnist(tmp_path, n_train=100, n_test=20)
    raw_x = arrays["train"][0]
    plain = mnist(gen(1), root=str(tmp_path), val_size=0.25, normalise=False)
    train_idx, val_idx = raw_indices(plain.train.x, raw_x), raw_indices(plain.splits["val"].x, raw_x)
    assert len(val_idx) == 25 and sorted(torch.cat([train_idx, val_idx]).tolist()) == list(range(100))
    assert torch.equal(plain.splits["val"].y, arrays["train"][1][val_idx])
    data = mnist(gen(1), root=str(tmp_path), val_size=0.25)
    ref = raw_x[train_idx]
    for name, idx in (("train", train_idx), ("val", val_idx)):
        torch.testing.assert_close(data.splits[name].x.double(), normalised(raw_x[idx], ref), rtol=0, atol=1e-5)
    torch.testing.assert_close(data.splits["test"].x.double(), normalised(arrays["test"][0], ref), rtol=0, atol=1e-5)
    again = mnist(gen(1), root=str(tmp_path), val_size=0.25, normalise=False)
    other = mnist(gen(2), root=str(tmp_path), val_size=0.25, normalise=False)
    assert torch.equal(raw_indices(again.splits["val"].x, raw_x), val_idx)
    assert not torch.equal(raw_indices(other.splits["val"].x, raw_x), val_idx)
    assert len(mnist(gen(1), root=str(tmp_path), val_size=10).splits["val"]) == 10  # a count


def test_caps_classes_by_index_and_flatten(tmp_path):
    arrays = write_mnist(tmp_path, n_train=100, n_test=40)
    data = mnist(gen(), root=str(tmp_path), val_size=10, train_size=30, test_size=7, normalise=False)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [30, 10, 7]
    assert torch.equal(raw_indices(data.splits["test"].x, arrays["test"][0]), torch.arange(7))  # the first 7
    pair = mnist(gen(), root=str(tmp_path), classes=[3, 8], val_size=0)
    assert pair.num_classes == 2 and len(pair.train) == int(torch.isin(arrays["train"][1], torch.tensor([3, 8])).sum())
    assert torch.equal(pair.train.y.bincount(), torch.stack([(arrays["train"][1] == c).sum() for c in (3, 8)]))
    flat = mnist(gen(), root=str(tmp_path), flatten=True, val_size=0)
    assert flat.input_shape == (784,)
    with pytest.raises(ConfigError, match="dataset.flatten=false"):
        CNN(flat.input_shape, 10)
    with pytest.raises(ConfigError, match="dataset.classes"):
        mnist(gen(), root=str(tmp_path), classes=["eleven", 1])
    with pytest.raises(ConfigError, match="dataset.train_size"):
        mnist(gen(), root=str(tmp_path), val_size=10, train_size=95)


def test_pca_projects_onto_the_training_principal_components(tmp_path, monkeypatch):
    """float64 SVD reference; the fixture's 10 class templates give 9 components far above the
    noise, so a share of 0.8 stops inside that well-separated group (components unique up to sign)."""
    write_cifar10(tmp_path, n_per_batch=40)
    base = cifar10(gen(), root=str(tmp_path), resize=8, val_size=0)
    data = cifar10(gen(), root=str(tmp_path), resize=8, val_size=0, pca_variance=0.8)
    x = base.train.x.flatten(1).double()
    mean = x.mean(0)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    k = int(((s**2).cumsum(0) / (s**2).sum() < 0.8).sum()) + 1
    assert data.input_shape == (k,) and k == 9
    for name in ("train", "test"):
        ref = (base.splits[name].x.flatten(1).double() - mean) @ vt[:k].T
        got = data.splits[name].x.double()
        torch.testing.assert_close(got * torch.sign((ref * got).sum(0)), ref, rtol=0, atol=1e-4)
    monkeypatch.setattr(images, "fit_pca", lambda *a: pytest.fail("PCA basis fitted again"))
    again = cifar10(gen(), root=str(tmp_path), resize=8, val_size=0, pca_variance=0.8)
    assert torch.equal(again.train.x, data.train.x)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADBENCH_DATA", str(tmp_path / "env"))
    assert images.default_root() == tmp_path / "env"
    monkeypatch.delenv("GRADBENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert images.default_root() == tmp_path / "xdg" / "gradbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert images.default_root() == Path.home() / ".cache" / "gradbench"


# ---------------------------------------------------------------- cache, missing and corrupt files

def test_second_run_reads_the_cache(runner, tmp_path, monkeypatch, parse_calls):
    root = tmp_path / "data"
    write_mnist(root, n_train=40, n_test=10)
    monkeypatch.setenv("GRADBENCH_DATA", str(root))  # the default root, no dataset.root
    args = ["train", "dataset=mnist", "dataset.val_size=8", "model=cnn", "max_steps=2", *FAST]
    [first] = runner(*args)
    assert parse_calls == ["MNIST", "MNIST"]  # train and test files
    [second] = runner(*args)
    assert parse_calls == ["MNIST", "MNIST"]  # not parsed again
    assert load_run(first)[1]["final"] == load_run(second)[1]["final"]
    assert len(list((root / images.CACHE_FOLDER).glob("*.pt"))) == 1
    runner(*args, "dataset.normalise=false", "dataset.flatten=true", "model=mlp")  # same pixels
    assert len(parse_calls) == 2
    runner(*args, "seed=1")  # another validation split: another cache file
    assert len(parse_calls) == 4 and len(list((root / images.CACHE_FOLDER).glob("*.pt"))) == 2


@pytest.mark.parametrize("damage", ["empty dict", "other settings"])
def test_a_wrong_cache_file_is_named_rebuilt_and_never_used(runner, tmp_path, monkeypatch, parse_calls, capsys, damage):
    """A readable cache that holds {} or splits built for other settings (under this setting's
    file name) is named in a warning and rebuilt from the raw files; the run is unaffected."""
    root = tmp_path / "data"
    write_mnist(root, n_train=40, n_test=10)
    monkeypatch.setenv("GRADBENCH_DATA", str(root))
    args = ["train", "dataset=mnist", "dataset.val_size=8", "model=cnn", "max_steps=2", *FAST]
    [first] = runner(*args)
    [path] = (root / images.CACHE_FOLDER).glob("*.pt")
    if damage == "empty dict":
        torch.save({}, path)
    else:
        runner(*args, "dataset.train_size=20")  # another setting, another file
        [other] = [p for p in (root / images.CACHE_FOLDER).glob("*.pt") if p != path]
        other.replace(path)
    calls = len(parse_calls)
    capsys.readouterr()
    [second] = runner(*args)
    assert len(parse_calls) == calls + 2  # parsed again, not read from the wrong file
    assert f"split cache {path}" in capsys.readouterr().out
    assert load_run(first)[1]["final"] == load_run(second)[1]["final"]


def test_missing_mnist_names_root_files_and_remedy(runner, tmp_path, capsys, offline):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "dataset=mnist", f"dataset.root={tmp_path / 'empty'}", "model=cnn")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for part in (str(tmp_path / "empty"), "MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte",
                 ".gz", "network", "copy the files in", "simulated offline"):
        assert part in err
    assert "Traceback" not in err


def test_missing_cifar_batch_is_named(runner, tmp_path, capsys, offline):
    write_cifar10(tmp_path / "data", n_per_batch=4)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SystemExit):
        runner("train", "dataset=cifar10_carcat", f"dataset.root={tmp_path / 'data'}")
    err = capsys.readouterr().err
    assert "missing: cifar-10-batches-py/data_batch_3;" in err and err.count("\n") == 1 and "cifar-10-python.tar.gz" in err and "network" in err


@pytest.mark.parametrize("victim", ["MNIST/raw/train-labels-idx1-ubyte.gz", "MNIST/raw/t10k-images-idx3-ubyte",
                                    "cifar-10-batches-py/data_batch_4", "cifar-10-batches-py/batches.meta"])
def test_truncated_file_is_named(runner, tmp_path, capsys, offline, victim):
    root = tmp_path / "data"
    write_mnist(root, n_train=20, n_test=10)
    write_cifar10(root, n_per_batch=4)
    path = root / victim
    if victim.endswith("idx3-ubyte"):  # an unpacked file, cut short
        path.write_bytes(gzip.decompress((root / (victim + ".gz")).read_bytes()))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    dataset = "mnist" if victim.startswith("MNIST") else "cifar10"
    with pytest.raises(SystemExit) as exit_info:
        runner("train", f"dataset={dataset}", f"dataset.root={root}", "dataset.val_size=2")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"cannot read {path}:" in err and "corrupt or truncated" in err
    if victim.endswith(".gz"):
        assert not path.with_suffix("").exists()  # no half-unpacked file left behind


# ---------------------------------------------------------------- the CNN

def compose_model(name: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[f"model={name}"]).model


def test_cnn_configs_build_report_000_and_paper_networks():
    small = instantiate(compose_model("cnn"), input_shape=(1, 28, 28), num_classes=10)
    convs = [m for m in small.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(1, 2, (3, 3), (1, 1)), (2, 4, (3, 3), (1, 1))]
    assert [type(m).__name__ for m in small.features] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert [(m.in_features, m.out_features) for m in small.classifier if isinstance(m, torch.nn.Linear)] == \
        [(784, 64), (64, 10)]
    paper = instantiate(compose_model("cnn_paper"), input_shape=(1, 28, 28), num_classes=10)
    assert [type(m).__name__ for m in paper.features].count("MaxPool2d") == 2
    conv = 64 * 9 + 64 + 3 * (64 * 64 * 9 + 64)
    assert sum(p.numel() for p in paper.parameters()) == conv + (64 * 7 * 7 * 1024 + 1024) + (1024 * 10 + 10)
    cifar = instantiate(compose_model("cnn_paper"), input_shape=(3, 32, 32), num_classes=10)
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="model.pool_after"):
        CNN((1, 28, 28), 10, pool_after=[3])


def test_cnn_forward_mode_matches_autograd_float64():
    """jvp through conv, ReLU and max-pool gives ∇L·v exactly (float64), as the forward
    estimator needs; the reference is reverse-mode autograd."""
    model = CNN((1, 12, 12), 3).double()
    model.initialise(gen(0))
    params = {k: p.detach() for k, p in model.named_parameters()}
    x = torch.randn(6, 1, 12, 12, generator=gen(1), dtype=torch.float64)
    objective = Objective(model, x, torch.tensor([0, 1, 2, 0, 1, 2]))
    v = {k: torch.randn(p.shape, generator=gen(2), dtype=torch.float64) for k, p in params.items()}
    _, d = jvp(objective.loss, (params,), (v,))
    g = grad(objective.loss)(params)
    torch.testing.assert_close(d, sum((g[k] * v[k]).sum() for k in params), rtol=1e-10, atol=1e-12)
