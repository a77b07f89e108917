"""K tangents combined by projection (estimator.combine=project, Flügel et al. 2024): the Gram
matrix from rank-1 factors equals the dense one, K ≥ n recovers ∇L exactly, and for dense normal
tangents the estimate's mean is (K/n)·∇L with E‖g‖² = (K/n)‖∇L‖², as derived in
gradbench.estimators.tangents.projection_spread.

Problem: logistic regression on penguins in float64 (W 3×4, b 3: n = 15 parameters).
"""

import math

import pytest
import torch

from bounds import assert_unbiased
from gradbench.data.tabular import penguins
from gradbench.estimators import Backward, Forward
from gradbench.estimators.tangents import Rank1, coefficients, projection_spread
from gradbench.run.job import stream
from gradbench.models import MLP, Objective


@pytest.fixture(scope="module")
def logreg():
    data = penguins(stream(0, "data")).to(torch.device("cpu"), torch.float64)
    model = MLP(data.input_shape, data.num_classes, hidden=[])
    model.initialise(stream(0, "init"))
    model.double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    objective = Objective(model, data.train.x, data.train.y)
    return objective, params, Backward()(objective, params)[1]


def flat(grads: dict, keys) -> torch.Tensor:
    return torch.cat([(g.dense() if hasattr(g, "dense") else g).flatten() for g in (grads[k] for k in keys)])


def test_gram_matrix_from_rank1_factors_equals_the_dense_one():
    """⟨a_i b_iᵀ, a_j b_jᵀ⟩ = (a_i·a_j)(b_i·b_j): the projection coefficients from the factors
    equal those from the dense tangents to float64 rounding (a 5×5 solve of O(100) entries)."""
    generator = torch.Generator().manual_seed(0)
    k = 5
    rank1 = Rank1(torch.randn(k, 6, generator=generator, dtype=torch.float64),
                  torch.randn(k, 8, generator=generator, dtype=torch.float64), torch.Size((6, 8)))
    bias = torch.randn(k, 6, generator=generator, dtype=torch.float64)
    d = torch.randn(k, generator=generator, dtype=torch.float64)
    factored = coefficients(d, {"w": rank1, "b": bias}, "project")
    dense = coefficients(d, {"w": rank1.dense(), "b": bias}, "project")
    torch.testing.assert_close(factored, dense, rtol=1e-10, atol=0)


@pytest.mark.parametrize("structure", ["dense", "rank1"])
def test_as_many_tangents_as_parameters_give_the_exact_gradient(logreg, structure):
    """K = n = 15 tangents span the whole space (almost surely), so the projection is ∇L itself,
    to the rounding of a 15×15 solve (condition number of a Gaussian Gram matrix: tolerance 1e-8)."""
    objective, params, truth = logreg
    forward = Forward(num_tangents=15, structure=structure, combine="project",
                      generator=torch.Generator().manual_seed(1))
    g = flat(forward(objective, params)[1], truth)
    t = flat(truth, truth)
    assert ((g - t).norm() / t.norm()).item() < 1e-8


def test_projection_mean_is_k_over_n_times_the_gradient(logreg):
    """Dense normal tangents, K = 3 of n = 15: the mean of M = 4000 projections lies within
    z·s_i/√M of (K/n)·∇L_i in every coordinate, s_i the coordinate's own sample standard deviation
    and z Bonferroni's for 15 coordinates (tests/bounds.py); it is far from ∇L itself (more than
    10 times the norm's standard error sqrt(variance/M), the variance (K/n)(1 − K/n)‖∇L‖²
    derived); and the mean of ‖g‖² is within 4 standard errors of (K/n)‖∇L‖²."""
    objective, params, truth = logreg
    forward = Forward(num_tangents=3, combine="project", generator=torch.Generator().manual_seed(2))
    draws = torch.stack([flat(forward(objective, params)[1], truth) for _ in range(4000)])
    t = flat(truth, truth)
    share, variance, _ = projection_spread(15, 3)
    assert share == pytest.approx(3 / 15)
    assert_unbiased(draws, t, scale=share)
    bound = 5 * math.sqrt(variance * t.square().sum().item() / len(draws))
    assert (draws.mean(0) - t).abs().max().item() > 10 * bound
    norms = draws.square().sum(1)
    tolerance = 4 * norms.std().item() / math.sqrt(len(norms))
    assert abs(norms.mean().item() - share * t.square().sum().item()) < tolerance


def test_spread_of_the_projection_matches_its_cosine(logreg):
    """E cos(g, ∇L) = E √β, β ~ Beta(K/2, (n−K)/2), against the mean cosine of 2000 projections
    (4 standard errors); for K = 1 it is the dense forward gradient's cosine."""
    objective, params, truth = logreg
    forward = Forward(num_tangents=3, combine="project", generator=torch.Generator().manual_seed(3))
    t = flat(truth, truth)
    cosines = torch.stack([torch.nn.functional.cosine_similarity(flat(forward(objective, params)[1], truth), t, 0)
                           for _ in range(2000)])
    spread = forward.spread(objective, params, truth)
    tolerance = 4 * cosines.std().item() / math.sqrt(len(cosines))
    assert abs(cosines.mean().item() - spread.cosine) < tolerance
    single = Forward().spread(objective, params, truth)
    assert projection_spread(15, 1)[2] == pytest.approx(single.cosine, rel=1e-12)


def test_an_unknown_combine_is_refused_naming_the_key():
    from gradbench.errors import ConfigError
    with pytest.raises(ConfigError, match="estimator.combine"):
        Forward(combine="median")
