"""Backward equals autograd; the forward gradient's loss, K-tangent variance and joint tangent.

Theory (Baydin et al. 2022): for v ~ N(0, I_n) and g = (∇L·v) v,
    E[g] = ∇L,   E‖g − ∇L‖² = (n + 1)‖∇L‖²   (since E[(vᵀa)² v vᵀ] = ‖a‖² I + 2 a aᵀ).
Every structure × law is checked for unbiasedness and its second moment in test_tangents.py.
"""


import pytest
import torch

from gradbench.estimators import Backward, Forward
from gradbench.run.job import stream
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
