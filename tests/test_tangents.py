"""Every tangent structure × law: unbiased, error ∝ 1/√N, second moment as derived, factored
updates equal dense ones.

The structures and laws come from gradbench.estimators.tangents (what `estimator.structure` and
`estimator.tangent` accept), so a new one is tested without editing this file. The problem is
penguins with an MLP 4→16→3 in float64 (131 parameters: a 16×4 and a 3×16 matrix, two biases).
"""

import itertools
import math

import pytest
import torch

from bounds import assert_unbiased
from gradbench.data.tabular import penguins
from gradbench.estimators import Forward
from gradbench.run.job import stream
from gradbench.models import MLP, Objective
from gradbench.optim import ManualSGD, apply
from gradbench.estimators.tangents import FOURTH_MOMENT, STRUCTURES, LowRank, densify, second_moment

KINDS = list(itertools.product(STRUCTURES, FOURTH_MOMENT))


def make_problem(hidden: list[int]):
    data = penguins(stream(0, "data")).to(torch.device("cpu"), torch.float64)
    model = MLP(data.input_shape, data.num_classes, hidden=hidden, activation="tanh")
    model.initialise(stream(0, "init"))
    model.double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    objective = Objective(model, data.train.x, data.train.y)
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    objective.loss(leaves).backward()
    return objective, params, {k: v.grad for k, v in leaves.items()}


@pytest.fixture(scope="module")
def problem():
    return make_problem([16])


@pytest.fixture(scope="module")
def logreg():
    """Logistic regression on penguins (W 3×4, b 3: 15 parameters): most of ‖∇L‖² sits in one
    small matrix, where rank-1 and dense second moments differ most."""
    return make_problem([])


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.flatten() for g in densify(grads).values()])


def squared_norms(problem, structure: str, law: str, count: int, seed: int = 7) -> torch.Tensor:
    """‖g‖² of `count` single estimates (num_tangents=1), through the estimator."""
    objective, params, _ = problem
    forward = Forward(structure=structure, tangent=law, generator=torch.Generator().manual_seed(seed))
    return torch.stack([flat(forward(objective, params)[1]).square().sum() for _ in range(count)])


@pytest.mark.parametrize("name", ["problem", "logreg"])
@pytest.mark.parametrize("structure, law", KINDS)
def test_second_moment_matches_its_derivation(request, name, structure, law):
    """mean of ‖g‖² over M = 4000 single estimates vs second_moment(); tolerance: 4 standard
    errors of that mean, s/√M with s the sample standard deviation of ‖g‖² (finite: every law
    here has finite eighth moments)."""
    problem = request.getfixturevalue(name)
    norms = squared_norms(problem, structure, law, 4000)
    expected = second_moment(structure, law, problem[2])
    tolerance = 4 * norms.std().item() / math.sqrt(len(norms))
    assert abs(norms.mean().item() - expected) < tolerance, (norms.mean().item(), expected, tolerance)


def test_rank1_normal_tangents_measurably_break_the_dense_formula(logreg):
    """The derivation is not the dense formula in disguise: rank-1 normal tangents add
    2(out + in + 1) per matrix (here 16 on top of n + 2 = 17), and M = 10 000 estimates reject
    (n + 2)‖∇L‖² by more than 4 standard errors while matching the rank-1 value."""
    norms = squared_norms(logreg, "rank1", "normal", 10000, seed=11)
    tolerance = 4 * norms.std().item() / math.sqrt(len(norms))
    assert abs(norms.mean().item() - second_moment("rank1", "normal", logreg[2])) < tolerance
    assert abs(norms.mean().item() - second_moment("dense", "normal", logreg[2])) > tolerance
    # Rademacher: m₄ = 1, so the two structures have the same second moment
    assert second_moment("rank1", "rademacher", logreg[2]) == pytest.approx(second_moment("dense", "rademacher", logreg[2]))


@pytest.mark.parametrize("structure, law", KINDS)
def test_mean_of_n_estimates_approaches_the_gradient_like_one_over_sqrt_n(problem, structure, law):
    """For N = 10, 100, 1000: the mean of N estimates (one call with num_tangents=N) has
    E‖ḡ_N − ∇L‖² = tr Σ / N, tr Σ = E‖g‖² − ‖∇L‖² (unbiased: no bias term). Over R = 100
    replicates, the ratio ‖ḡ_N − ∇L‖²·N / tr Σ has mean 1; tolerance 4 standard errors
    (sample std / √R). So the error falls like 1/√N for every N, not just on average."""
    objective, params, truth = problem
    t = flat(truth)
    trace = second_moment(structure, law, truth) - t.square().sum().item()
    for count in (10, 100, 1000):
        forward = Forward(num_tangents=count, structure=structure, tangent=law,
                          generator=torch.Generator().manual_seed(count))
        ratios = torch.stack([(flat(forward(objective, params)[1]) - t).square().sum() * count / trace
                              for _ in range(100)])
        tolerance = 4 * ratios.std().item() / math.sqrt(len(ratios))
        assert abs(ratios.mean().item() - 1) < tolerance, (count, ratios.mean().item(), tolerance)


@pytest.mark.parametrize("structure, law", KINDS)
def test_the_average_estimate_is_unbiased(problem, structure, law):
    """20 000 estimates as B = 100 independent means of 200 (num_tangents=200): in EVERY one of
    the 131 coordinates the grand mean lies within z·s_i/√B of ∇L_i, s_i that coordinate's own
    sample standard deviation and z Bonferroni's for 131 coordinates (tests/bounds.py). A 2×
    bias moves the largest coordinate (≥ ‖∇L‖/√131) by ~20 of its standard errors."""
    objective, params, truth = problem
    forward = Forward(num_tangents=200, structure=structure, tangent=law,
                      generator=torch.Generator().manual_seed(3))
    draws = torch.stack([flat(forward(objective, params)[1]) for _ in range(100)])
    assert_unbiased(draws, flat(truth))


@pytest.mark.parametrize("shape", [(16, 4), (3, 2, 3, 3)])  # a linear weight, a conv kernel
def test_a_factored_update_equals_the_dense_update_to_rounding(shape):
    """θ − lr·Σ_k u_k w_kᵀ by one addmm_ equals θ − lr·(dense estimate): float64, so the two
    roundings differ by a few ulps of the largest term (K = 3 products of O(1) entries)."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(shape, generator=generator, dtype=torch.float64)
    rest = math.prod(shape[1:])
    estimate = LowRank(torch.randn(3, shape[0], generator=generator, dtype=torch.float64),
                       torch.randn(3, rest, generator=generator, dtype=torch.float64), torch.Size(shape))
    bias, bias_grad = torch.randn(2, shape[0], generator=generator, dtype=torch.float64)
    for optimizer_type in (torch.optim.SGD, ManualSGD):
        params = {"w": theta.clone(), "b": bias.clone()}
        apply(optimizer_type(list(params.values()), lr=0.1), params, {"w": estimate, "b": bias_grad})
        assert torch.allclose(params["w"], theta - 0.1 * estimate.dense(), rtol=0, atol=1e-14)
        assert torch.equal(params["b"], bias.add(bias_grad, alpha=-0.1))  # a dense one as torch's SGD
        assert all(p.grad is None for p in params.values())  # nothing held after the step


@pytest.mark.parametrize("optimizer_type", [torch.optim.SGD, ManualSGD])
@pytest.mark.parametrize("settings", [dict(momentum=0.9), dict(weight_decay=0.01),
                                      dict(momentum=0.9, nesterov=True)], ids=["momentum", "weight_decay", "nesterov"])
def test_an_optimizer_with_state_gets_the_dense_estimate(optimizer_type, settings):
    """Momentum needs g itself, and weight decay adds λθ to it: the factored estimate is formed
    and the optimizer steps on it, bit for bit as torch's SGD on the dense estimate (a factored
    update θ − lr·Σ u wᵀ would drop the decay term λθ)."""
    generator = torch.Generator().manual_seed(1)
    estimate = LowRank(torch.randn(2, 5, generator=generator), torch.randn(2, 4, generator=generator),
                       torch.Size((5, 4)))
    theta = torch.randn(5, 4, generator=generator)
    factored, reference = {"w": theta.clone()}, theta.clone()
    ours = optimizer_type([factored["w"]], lr=0.1, **settings)
    torch_sgd = torch.optim.SGD([reference], lr=0.1, **settings)
    for _ in range(3):
        apply(ours, factored, {"w": estimate})
        reference.grad = estimate.dense()
        torch_sgd.step()
    assert torch.equal(factored["w"], reference)
