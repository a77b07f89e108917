"""Hand-derived backprop equals autograd (float64, 1e-10); central finite differences agree to
their own rounding and truncation error (central_difference_error);
the manual estimator refuses a model it has no formulas for, before any training step.

Finite-difference tolerance from theory: central differences with h = 1e-6 in float64 err by
h²·|∂³L|/6 ≈ 1e-11 (truncation) plus ~10·ε·|L|/h ≈ 1e-9·|L| (rounding); a one-sided difference's
h·|∂²L|/2 is far outside that, so the tolerance tells the two apart.
"""

import pytest
import torch

from conftest import FAST, load_run
from gradbench.errors import ConfigError
from gradbench.estimators import FiniteDifference, Manual
from gradbench.models import MLP, Objective
from gradbench.models.toynet import ToyNet


class WiderMLP(MLP):
    """Computes the same as an MLP, but is not one: manual must refuse it (exact types only)."""

    def __init__(self, input_shape, num_classes, **config):
        super().__init__(input_shape, num_classes, **config)


def autograd(objective: Objective, params: dict) -> tuple[torch.Tensor, dict]:
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    loss = objective.loss(leaves)
    return loss.detach(), dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def classifier(hidden: list[int], activation: str, l2: float, scale: float = 1.0):
    """An MLP on 24 seeded examples (5 features, 3 classes), weights N(0, 1), float64."""
    g = torch.Generator().manual_seed(len(hidden) * 31 + len(activation))
    x = scale * torch.randn(24, 5, generator=g, dtype=torch.float64)
    y = torch.arange(24) % 3
    model = MLP((5,), 3, hidden=hidden, activation=activation, l2=l2, init={"law": "normal", "std": 1.0})
    model.initialise(g)
    model.double()
    return Objective(model, x, y), {k: p.detach() for k, p in model.named_parameters()}


def toynet(l2: float):
    g = torch.Generator().manual_seed(2)
    model = ToyNet((3,), l2=l2)
    model.initialise(g)
    model.double()
    x = torch.rand(40, 3, generator=g, dtype=torch.float64)
    return Objective(model, x, None), {k: p.detach() for k, p in model.named_parameters()}


def assert_close(got: tuple, want: tuple, atol: float) -> None:
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert abs(loss.item() - ref_loss.item()) <= atol
    assert list(grads) == list(ref_grads)
    for name in ref_grads:
        assert grads[name].shape == ref_grads[name].shape
        assert (grads[name] - ref_grads[name]).abs().max().item() <= atol, name


HIDDEN = [[7], [6, 5], [6, 5, 4], [6, 5, 4, 3]]


@pytest.mark.parametrize("l2", [0.0, 0.03])
@pytest.mark.parametrize("hidden", HIDDEN, ids=lambda h: f"{len(h)}hidden")
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "softplus"])
def test_manual_equals_autograd_on_mlps(activation, hidden, l2):
    objective, params = classifier(hidden, activation, l2)
    assert_close(Manual()(objective, params), autograd(objective, params), atol=1e-10)


@pytest.mark.parametrize("l2", [0.0, 0.03])
def test_manual_equals_autograd_on_logreg_and_toynet(l2):
    for objective, params in (classifier([], "relu", l2), toynet(l2)):
        assert_close(Manual()(objective, params), autograd(objective, params), atol=1e-10)


def test_softplus_above_torchs_threshold_matches_too():
    """Pre-activations beyond 20, where torch's softplus is the identity (derivative exactly 1)."""
    objective, params = classifier([6], "softplus", 0.0, scale=30.0)
    assert_close(Manual()(objective, params), autograd(objective, params), atol=1e-10)


@pytest.mark.parametrize("case", ["logreg", "relu", "sigmoid", "tanh", "softplus-l2", "toynet-l2"])
def test_finite_differences_agree_with_autograd(case):
    objective, params = {
        "logreg": lambda: classifier([], "relu", 0.0),
        "relu": lambda: classifier([6, 5], "relu", 0.0),
        "sigmoid": lambda: classifier([6, 5], "sigmoid", 0.0),
        "tanh": lambda: classifier([6], "tanh", 0.0),
        "softplus-l2": lambda: classifier([6], "softplus", 0.03),
        "toynet-l2": lambda: toynet(0.03),
    }[case]()
    reference = autograd(objective, params)
    assert_close(FiniteDifference(step=H)(objective, params), reference, atol=central_difference_error(reference[0]))


H = 1e-6
EPS = torch.finfo(torch.float64).eps / 2  # unit roundoff, 1.1e-16


def central_difference_error(loss: torch.Tensor) -> float:
    """What a central difference (L(θ + h e_i) − L(θ − h e_i)) / 2h may be off by in float64.

    Rounding: each value of L carries an error δ ≤ k·ε·|L| (k = 10: a few operations per
    example, summed over 24 examples, errors adding like a random walk); the difference of two
    such values over 2h is off by at most δ/h = 10·ε·|L|/h ≈ 1.1e-9·|L| at h = 1e-6.
    Truncation: h²·|∂³L|/6, with |∂³L| ≤ 100 for these models (N(0, 1) weights, activations
    whose derivatives are bounded by 1, depth ≤ 3): 1.7e-11. A one-sided difference is off by
    h·|∂²L|/2 ≈ 5e-8 … 2e-6 here, 20-100 times this bound.
    """
    return 10 * EPS * abs(loss.item()) / H + H ** 2 * 100 / 6


def test_finite_differences_in_float32_params_return_float32():
    objective, params = classifier([6], "tanh", 0.0)
    params32 = {k: p.float() for k, p in params.items()}
    loss, grads = FiniteDifference()(Objective(objective.model.float(), objective.x.float(), objective.y), params32)
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads.values())
    ref = autograd(objective, params)[1]
    assert all((grads[k].double() - ref[k]).abs().max() < 1e-6 for k in ref)  # float64 inside


def test_manual_refuses_an_unsupported_model():
    with pytest.raises(ConfigError, match="estimator=manual has no hand-derived gradient for model WiderMLP"):
        Manual().bind(WiderMLP((4,), 3, hidden=[5]))
    Manual().bind(MLP((4,), 3, hidden=[5]))  # supported: no error


def test_manual_refuses_the_cnn():
    cnn = pytest.importorskip("gradbench.models.cnn")
    with pytest.raises(ConfigError, match="no hand-derived gradient for model CNN"):
        Manual().bind(cnn.CNN((1, 8, 8), 3))


def test_manual_refuses_before_any_training_step(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "estimator=manual", "model._target_=test_manual.WiderMLP", *FAST)
    assert exit_info.value.code == 2
    assert "estimator=manual has no hand-derived gradient" in capsys.readouterr().err
    assert not list(runner.cwd.rglob("metrics.csv"))


def test_manual_trains_exactly_like_backward(runner):
    """Same seed, float64: the two estimators give the same run to rounding."""
    common = ("train", "model=logreg", "dtype=float64", "max_steps=20", "batch_size=32", *FAST)
    (manual,) = runner(*common, "estimator=manual")
    (backward,) = runner(*common, "estimator=backward")
    a, b = load_run(manual)[0], load_run(backward)[0]
    assert (a["batch_loss"] - b["batch_loss"]).abs().max() < 1e-12
    assert (a["train_loss"] - b["train_loss"]).abs().max() < 1e-12
