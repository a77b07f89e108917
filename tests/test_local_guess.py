"""Local-guess forward gradient (estimators/local_guess.py) against autograd, float64.

The estimate is a closed form of two autograd gradients (the local objective's, the network
loss's), so it is checked to float64 rounding: each entry is a product of a few sums of at most a
few hundred O(1) terms, relative error ≤ 1e-12. The JVP along the guess is checked against the
autograd inner product ∇L·g and against torch.func.jvp to the same tolerance.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch.func import jvp

from conftest import FAST
from gradbench.errors import ConfigError
from gradbench.estimators import LocalGuess
from gradbench.estimators.local_guess import block_of, network_loss
from gradbench.estimators.probes import compare
from gradbench.models import MLP, Objective
from gradbench.models.cnn import CNN


def problem(kind: str = "mlp"):
    if kind == "mlp":
        model = MLP((4,), 3, [6, 5], activation="tanh", local_losses=True, l2=0.01)
        x_shape = (4,)
    else:
        model = CNN((1, 6, 6), 3, channels=[2, 3], pool_after=[1], hidden=[4], local_losses=True)
        x_shape = (1, 6, 6)
    model.initialise(torch.Generator().manual_seed(0))
    model.double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, *x_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=g)
    return Objective(model, x, y), {k: p.detach() for k, p in model.named_parameters()}


def autograd(f, params):
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    grads = torch.autograd.grad(f(leaves), list(leaves.values()), allow_unused=True)  # L ignores the heads
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}


def close(a, b):
    scale = max(v.abs().max().item() for v in b.values())
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12 * scale, msg=k)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("scaling", ["network", "block"])
def test_estimate_is_the_projection_of_the_network_gradient_on_the_local_guess(kind, scaling):
    objective, params = problem(kind)
    guess = autograd(objective.loss, params)  # the local objective: each block's local backprop
    full = autograd(lambda p: network_loss(objective.model, p, objective.x, objective.y), params)
    owner = block_of(objective.model, params)
    groups = [[k for k in params if owner[k] is not None]] if scaling == "network" else \
        [[k for k in params if owner[k] == b] for b in sorted({o for o in owner.values() if o is not None})]
    expected = {k: guess[k] for k in params if owner[k] is None}  # heads: their local gradient
    for names in groups:
        dot = sum((full[k] * guess[k]).sum() for k in names)
        size = sum(guess[k].square().sum() for k in names)
        expected.update({k: dot / size * guess[k] for k in names})
    loss, estimate = LocalGuess(scaling=scaling)(objective, params)
    close(estimate, expected)
    torch.testing.assert_close(loss, network_loss(objective.model, params, objective.x, objective.y),
                               rtol=1e-14, atol=0)
    if scaling == "block":  # the last block's guess is ∇L itself: it gets its exact gradient
        last = max(o for o in owner.values() if o is not None)
        close({k: estimate[k] for k in params if owner[k] == last}, {k: full[k] for k in params if owner[k] == last})


def test_the_directional_derivative_along_the_guess_matches_torch_func_jvp():
    objective, params = problem()
    owner = block_of(objective.model, params)
    guess = autograd(objective.loss, params)
    tangent = {k: guess[k] if owner[k] is not None else torch.zeros_like(guess[k]) for k in params}

    def loss(p):
        return network_loss(objective.model, p, objective.x, objective.y)

    full = autograd(loss, params)
    by_autograd = sum((full[k] * tangent[k]).sum() for k in params)
    _, by_jvp = jvp(loss, (params,), (tangent,))
    torch.testing.assert_close(by_jvp, by_autograd, rtol=1e-12, atol=0)
    # the estimator's scale times ‖g‖² is that derivative
    _, estimate = LocalGuess(scaling="network")(objective, params)
    k = "layers.0.weight"
    size = sum(guess[n].square().sum() for n in params if owner[n] is not None)
    scale = (estimate[k] * guess[k]).sum() / guess[k].square().sum()
    torch.testing.assert_close(scale * size, by_jvp, rtol=1e-12, atol=0)


@pytest.mark.parametrize("scaling", ["network", "block"])
def test_spread_gives_the_cosine_with_the_target_gradient(scaling):
    objective, params = problem()
    estimator = LocalGuess(scaling=scaling)
    truth = autograd(estimator.target(objective).loss, params)
    _, estimate = estimator(objective, params)
    measured = compare(estimate, truth)["cosine"].item()
    spread = estimator.spread(objective, params, truth)
    assert spread.cosine == pytest.approx(measured, rel=1e-12)
    assert spread.variance == 0 and 0 < spread.cosine < 1  # biased, not orthogonal
    rel = compare(estimate, truth)["rel_error"].item()
    assert math.sqrt(spread.bias2) == pytest.approx(rel, rel=1e-10)


def test_block_scaling_aligns_better_here_and_costs_one_jvp_per_block():
    objective, params = problem()
    cosines = {}
    for scaling in ("network", "block"):
        estimator = LocalGuess(scaling=scaling)
        truth = autograd(estimator.target(objective).loss, params)
        cosines[scaling] = estimator.spread(objective, params, truth).cosine
        assert estimator.passes(objective.model).forward_mode == (1 if scaling == "network" else 3)
    assert cosines["block"] > cosines["network"]


def test_a_model_without_local_losses_is_refused():
    with pytest.raises(ConfigError, match="model.local_losses=true"):
        LocalGuess().bind(MLP((4,), 3, [5]))
    with pytest.raises(ConfigError, match="estimator.scaling"):
        LocalGuess(scaling="layer")


def test_diagnose_measures_its_cosine_and_summary_states_its_passes(runner):
    (run,) = runner("train", "dataset=penguins", "model=mlp", "model.hidden=[8,8]", "model.local_losses=true",
                    "estimator=local_guess", "max_steps=3", "device=cpu", "diagnose=true", *FAST)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["grad_cosine"].between(0, 1 + 1e-12).all() and (metrics["grad_cosine"] < 1 - 1e-9).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["passes"] == {"forward": 1, "forward_mode": 3, "backward": 1}


def test_check_lists_measured_cosine_beside_theory(runner):
    (run,) = runner("check", "dataset=penguins", "model=mlp", "model.hidden=[8]", "model.local_losses=true",
                    "check.samples=[1,2]", "batch_size=32", "device=cpu")
    table = pd.read_csv(run / "check.csv")
    rows = table[(table["estimator"] == "local_guess") & (table["kind"] == "each")]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["cosine"] == pytest.approx(row["expected_cosine"], rel=1e-9)
    assert row["rel_error"] == pytest.approx(row["expected_rel_error"], rel=1e-9)


def test_variance_sweep_measures_exactly_its_theory(runner):
    """Deterministic: every sample is the same estimate, so rel_mse is its bias² to rounding."""
    (run,) = runner("variance", "dataset=penguins", "model=mlp", "model.local_losses=true", "device=cpu",
                    "variance.estimators=[local_guess]", "variance.widths=[8]", "variance.depths=[2]",
                    "variance.samples=2", "variance.batch_size=32")
    table = pd.read_csv(run / "variance.csv")
    assert len(table) == 2 and (table["rel_mse_se"] < 1e-12).all()
    assert table["rel_mse"].to_numpy() == pytest.approx(table["theory"].to_numpy(), rel=1e-9)
    assert (table["theory"] > 0).all()  # biased by design
