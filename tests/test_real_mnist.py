"""Real MNIST (slow; skipped where ../shared/data is absent, as on a user's fresh clone).

The backward MLP under the paper's protocol (784-1024-1024-10, SGD batch 64, lr 2e-4 decaying
as exp(−1e-4·step)) against an independent plain-PyTorch loop written here: same initial
weights, same batches, same schedule; gradbench's test accuracy must lie in the 95% CI of the
plain loop's over 3 seeds.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import shared_mnist
from gradbench.data.images import mnist
from gradbench.run.job import stream
from gradbench.models import MLP
from gradbench.present.report_runs import mean_ci

RAW = shared_mnist() or Path("/nonexistent")  # $GRADBENCH_DATA or ../shared/data (conftest)
STEPS, SEEDS = 2000, (0, 1, 2)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not RAW.is_dir(), reason="real MNIST not in ../shared/data")]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A data root whose MNIST/raw is the shared folder, so the split cache goes to tmp."""
    root = tmp_path_factory.mktemp("mnist")
    (root / "MNIST").mkdir()
    (root / "MNIST" / "raw").symlink_to(RAW)
    return root


def plain_pytorch(seed: int, root: Path) -> float:
    """The paper's protocol written out with nothing but torch: returns the test accuracy."""
    data = mnist(stream(seed, "data"), root=str(root), classes=None, resize=None, val_size=5000,
                 train_size=None, test_size=None, normalise=True, flatten=False)
    x, y = data.splits["train"].x, data.splits["train"].y
    reference = MLP(data.input_shape, 10, hidden=[1024, 1024])
    reference.initialise(stream(seed, "init"))  # the same initial weights as gradbench's run
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                        nn.Linear(1024, 10))
    net.load_state_dict({_renamed(k): v for k, v in reference.state_dict().items()})
    optimizer = torch.optim.SGD(net.parameters(), lr=2e-4)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=math.exp(-1e-4))
    order, batches = stream(seed, "batches"), []
    for _ in range(STEPS):
        if not batches:
            batches = list(torch.randperm(len(y), generator=order).split(64))[::-1]
        idx = batches.pop()
        loss = F.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    test = data.splits["test"]
    with torch.no_grad():
        return (net(test.x).argmax(1) == test.y).double().mean().item()


def _renamed(key: str) -> str:
    """gradbench's `layers.i.weight` (after its flatten stage) → nn.Sequential's `i+1.weight`."""
    _, index, name = key.split(".")
    return f"{int(index) + 1}.{name}"


def test_backward_mlp_matches_a_plain_pytorch_loop(runner, root):
    ours = []
    for seed in SEEDS:
        (run,) = runner("train", "+experiment=paper_mnist", "estimator=backward", f"seed={seed}",
                        f"max_steps={STEPS}", "eval_every=1000", f"dataset.root={root}", "log_every_s=1000")
        ours.append(json.loads((run / "summary.json").read_text())["final"]["test"]["accuracy"])
    plain = [plain_pytorch(seed, root) for seed in SEEDS]
    mean, ci, _ = mean_ci(plain)
    assert abs(sum(ours) / len(ours) - mean) <= ci, (ours, plain, ci)
    print(f"test accuracy after {STEPS} steps: gradbench {ours}, plain PyTorch {plain} (mean {mean:.4f} ± {ci:.4f})")
