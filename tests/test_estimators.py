"""Backward equals autograd; the forward gradient is unbiased with the variance theory predicts.

Theory (Baydin et al. 2022): for v ~ N(0, I_n) and g = (∇L·v) v,
    E[g] = ∇L,   E‖g − ∇L‖² = (n + 1)‖∇L‖²   (since E[(vᵀa)² v vᵀ] = ‖a‖² I + 2 a aᵀ),
so the mean of N independent estimates has E‖ḡ − ∇L‖² / ‖∇L‖² = (n + 1) / N. For Rademacher
tangents the fourth moment is 1, not 3, and the constant is (n − 1).
"""

import math

import pytest
import torch

from gradbench.estimators import Backward, Forward
from gradbench.job import stream
from gradbench.data.tabular import penguins
from gradbench.models import MLP, Objective


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.fixture(scope="module")
def problem():
    """Penguins, an MLP 4→16→3 (131 parameters) in float64 at a seeded init."""
    data = penguins(stream(0, "data")).to(torch.device("cpu"), torch.float64)
    model = MLP(data.input_shape, data.num_classes, hidden=[16], activation="tanh")
    model.initialise(stream(0, "init"))
    model.double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    return Objective(model, data.train.x, data.train.y), params


def true_gradient(objective, params) -> torch.Tensor:
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    objective.loss(leaves).backward()
    return torch.cat([leaves[k].grad.flatten() for k in params])


def test_backward_equals_loss_backward(problem):
    objective, params = problem
    loss, grads = Backward()(objective, params)
    assert torch.allclose(flat(grads), true_gradient(objective, params), rtol=0, atol=1e-14)
    assert loss.item() == pytest.approx(objective.loss(params).item(), abs=1e-14)


def test_forward_loss_is_the_batch_loss(problem):
    objective, params = problem
    loss, _ = Forward(generator=torch.Generator().manual_seed(0))(objective, params)
    assert loss.item() == pytest.approx(objective.loss(params).item(), abs=1e-14)


@pytest.mark.parametrize("law, excess", [("normal", 1), ("rademacher", -1)])
def test_forward_is_unbiased_with_error_shrinking_like_one_over_sqrt_n(problem, law, excess):
    """‖ḡ_N − ∇L‖²·N / ((n + c)‖∇L‖²) ≈ 1 for every N: the error shrinks like 1/sqrt(N).

    Tolerance from theory: for N ≥ 500 the mean ḡ_N is close to Gaussian (CLT) with covariance
    Σ/N, Σ = ‖a‖²I + a aᵀ (a = ∇L), so the ratio has mean 1 and standard deviation
    sqrt(2 tr Σ²)/tr Σ = sqrt(2(n + 3))/(n + 1) ≈ 0.12 for n = 131; we allow 4 of them.
    """
    objective, params = problem
    truth = true_gradient(objective, params)
    n = truth.numel()
    sigma = math.sqrt(2 * (n + 3)) / (n + 1)
    generator = torch.Generator().manual_seed(1234)
    forward = Forward(num_tangents=500, tangent=law, generator=generator)
    errors = {}
    for count in (500, 5000, 50000):
        chunks = [flat(forward(objective, params)[1]) for _ in range(count // 500)]
        sq_error = (torch.stack(chunks).mean(0) - truth).square().sum() / truth.square().sum()
        ratio = sq_error.item() * count / (n + excess)
        assert abs(ratio - 1) < 4 * sigma, (count, ratio)
        errors[count] = math.sqrt(sq_error.item())
    # Two decades more estimates, one decade less error (each ratio within its band above).
    assert errors[50000] < errors[500] / 5


def test_more_tangents_reduce_the_variance(problem):
    """E‖g_K − ∇L‖² = (n + 1)‖∇L‖² / K: K = 8 tangents cut the mean squared error by 8.

    Tolerance: ‖g_1 − ∇L‖² ≈ (v·a)²‖v‖² is dominated by (v·a)² ~ ‖a‖²χ²₁ (relative spread
    sqrt 2), so its mean over M = 400 draws has relative spread sqrt(2/400) ≈ 0.07; for K = 8 it
    is sqrt(2/8/400) ≈ 0.025. Four spreads: one within 30% of theory, the ratio within 8·(1 ± 0.3).
    """
    objective, params = problem
    truth = true_gradient(objective, params)
    generator = torch.Generator().manual_seed(99)

    def mean_sq_error(k: int) -> float:
        forward = Forward(num_tangents=k, generator=generator)
        draws = [(flat(forward(objective, params)[1]) - truth).square().sum() for _ in range(400)]
        return torch.stack(draws).mean().item()

    one, eight = mean_sq_error(1), mean_sq_error(8)
    n = truth.numel()
    assert one / truth.square().sum().item() == pytest.approx(n + 1, rel=0.3)
    assert one / eight == pytest.approx(8, rel=0.3)


def test_one_tangent_spans_all_parameters_jointly(problem):
    """The estimate is a single scalar times one joint tangent: all tensors share that scalar."""
    objective, params = problem
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    _, grads = Forward(generator=generator)(objective, params)
    generator.set_state(state)
    tangent = torch.randn(sum(p.numel() for p in params.values()), generator=generator, dtype=torch.float64)
    truth = true_gradient(objective, params)
    assert torch.allclose(flat(grads), (truth @ tangent) * tangent, atol=1e-12)
