"""Activity perturbation (FG-A, gradbench.estimators.activities): the fused pass equals a
torch.func.jvp reference to float64 rounding; the estimate is unbiased with error ∝ 1/√N on the
MLP and the CNN (with and without local losses); its second moment matches the derivation.

Problems are tiny and float64: an MLP 36→6→4→4 (tanh) and a CNN (2×6×6 input, conv 4, conv 2,
pool, fc 6), 9 examples, so thousands of estimates take a second; each without local losses,
with one head per block, and with the blocks' units in 2 groups (local_groups).
"""

import math

import pytest
import torch
from torch.func import jvp

from bounds import assert_unbiased
from gradbench.data.tabular import penguins
from gradbench.estimators import Backward, ForwardActivities
from gradbench.estimators.activities import (_apply, directional, estimate, expected_error, group_counts,
                                             output_shapes, reference_losses)
from gradbench.estimators.tangents import FOURTH_MOMENT
from gradbench.run.job import stream
from gradbench.models import MLP, Objective
from gradbench.models.cnn import CNN

MODELS = {"mlp": lambda local, g: MLP((1, 6, 6), 4, hidden=[6, 4], activation="tanh", local_losses=local,
                                      local_groups=g),
          "cnn": lambda local, g: CNN((2, 6, 6), 4, channels=[4, 2], pool_after=[2], hidden=[6],
                                      local_losses=local, local_groups=g)}
# (model, local losses, groups): global, local with one head per block, local in 2 groups
CASES = [(name, local, groups) for name in MODELS for local, groups in ((False, 1), (True, 1), (True, 2))]


def make(name: str, local: bool, groups: int = 1, seed: int = 0):
    model = MODELS[name](local, groups)
    model.initialise(stream(seed, "init"))
    model.double()
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 6, 6) if name == "mlp" else (2, 6, 6)
    x = torch.randn(9, *shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=generator)
    params = {k: p.detach() for k, p in model.named_parameters()}
    objective = Objective(model, x, y)
    return objective, params, Backward()(objective, params)[1]


def flat(grads: dict, keys) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in keys])


@pytest.mark.parametrize("name, local, groups", CASES)
def test_fused_pass_equals_the_jvp_reference(name, local, groups):
    """Per layer and example, d = ∂ℓ/∂z · u from the fused pass equals torch.func.jvp of the plain
    per-example losses (reference_losses) along that layer's tangent alone; the parameter estimate
    equals autograd's vector-Jacobian product of z = layer(input) with ĝ = mean_k d_k u_k. Float64:
    sums of a few hundred O(1) products round to ~1e-15 relative; tolerance 1e-12 of the scale."""
    objective, params, _ = make(name, local, groups)
    model, x, y = objective.model, objective.x, objective.y
    generator = torch.Generator().manual_seed(5)
    loss, layers = directional(model, params, x, y,
                               lambda shape: torch.randn(2, *shape, generator=generator, dtype=torch.float64))
    assert loss.item() == pytest.approx(objective.loss(params).item(), rel=1e-14)
    shapes = output_shapes(model, params, x)
    assert [layer.prefix for layer in layers] == list(shapes)  # every Linear / Conv2d, heads included
    grouped = {layer.prefix for layer in layers if layer.d.shape[-1] == groups}
    assert grouped == (set(group_counts(model)) if groups > 1 else set(shapes))  # one d per group loss
    grads = estimate(model, params, layers)
    for layer in layers:
        zeros = {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes.items()}

        def losses(offset):  # every block's N × G terms side by side; other blocks' columns get 0
            return torch.cat(reference_losses(model, params, x, y, {**zeros, layer.prefix: offset})[0], 1)

        d = torch.stack([jvp(losses, (zeros[layer.prefix],), (u,))[1] for u in layer.u])  # K × N × ΣG
        d = d[..., d.abs().sum((0, 1)) > 0] if layer.d.shape[-1] > 1 else d.sum(-1, keepdim=True)
        torch.testing.assert_close(layer.d, d, rtol=0, atol=1e-12 * d.abs().max().item())
        # the contraction for the parameters, by autograd on the layer alone; a group's d scales
        # the group's contiguous run of units
        k, n, groups = d.shape
        g = torch.einsum("kng,kngr->ngr", d, layer.u.reshape(k, n, groups, -1)).reshape(layer.u.shape[1:]) / k
        names = [n for n in (f"{layer.prefix}.weight", f"{layer.prefix}.bias") if n in params]
        leaves = {n: params[n].clone().requires_grad_() for n in names}
        _, inputs = reference_losses(model, params, x, y, zeros)
        z = _apply(layer.module, layer.prefix, {**params, **leaves}, inputs[layer.prefix].detach())
        for n, ref in zip(names, torch.autograd.grad((z * g).sum(), list(leaves.values()))):
            torch.testing.assert_close(grads[n], ref, rtol=0, atol=1e-12 * ref.abs().max().item())


@pytest.mark.parametrize("name, local, groups", CASES)
def test_the_average_estimate_is_unbiased(name, local, groups):
    """M estimates as B = 100 independent means of M/B (M = 20 000 on the MLP, 4000 on the
    costlier CNN): in every coordinate the grand mean lies within z·s_i/√B of ∇L_i, s_i that
    coordinate's own sample standard deviation, z Bonferroni's for all coordinates (tests/bounds.py)."""
    objective, params, truth = make(name, local, groups)
    count = 20000 if name == "mlp" else 4000
    fga = ForwardActivities(num_tangents=count // 100, generator=torch.Generator().manual_seed(1))
    draws = torch.stack([flat(fga(objective, params)[1], truth) for _ in range(100)])
    assert_unbiased(draws, flat(truth, truth))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_penalty_gradient_is_added_exactly(name):
    """With model.l2 = λ the loss gains λ·Σ‖W‖² over the weight matrices and kernels; its
    gradient 2λW does not depend on the tangents, so with the same tangents (same seed) the
    estimate with λ minus the estimate without equals autograd's gradient of the penalty alone,
    to float64 rounding of O(1) sums (1e-12 of the largest entry). A halved term (λW) is off by
    λ|W| ≈ 0.1·0.3 in every weight."""
    objective, params, plain_truth = make(name, False)
    plain = ForwardActivities(num_tangents=3, generator=torch.Generator().manual_seed(4))(objective, params)[1]
    objective.model.l2 = 0.1
    penalised = ForwardActivities(num_tangents=3, generator=torch.Generator().manual_seed(4))(objective, params)[1]
    truth = Backward()(objective, params)[1]  # autograd through the penalised loss
    assert any(not torch.equal(truth[k], plain_truth[k]) for k in params)  # the penalty is in the loss
    for k in params:
        expected = truth[k] - plain_truth[k]
        torch.testing.assert_close(penalised[k] - plain[k], expected, rtol=0,
                                   atol=1e-12 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("law", list(FOURTH_MOMENT))
@pytest.mark.parametrize("name, local, groups", CASES)
def test_error_falls_like_one_over_sqrt_n_as_derived(name, local, groups, law):
    """For N = 10, 100 (and 1000 on the MLP) the mean of N estimates has E‖ḡ_N − ∇L‖² = tr Σ / N
    with tr Σ the derived expected_error. Over R = 60 replicates the ratio ‖ḡ_N − ∇L‖²·N / tr Σ
    has mean 1; tolerance 4 standard errors (sample std / √R). Checks the theory for conv too."""
    objective, params, truth = make(name, local, groups)
    t, trace = flat(truth, truth), expected_error(objective, params, FOURTH_MOMENT[law])
    for count in (10, 100, 1000) if name == "mlp" else (10, 100):
        fga = ForwardActivities(num_tangents=count, tangent=law, generator=torch.Generator().manual_seed(count))
        ratios = torch.stack([(flat(fga(objective, params)[1], truth) - t).square().sum() * count / trace
                              for _ in range(60)])
        tolerance = 4 * ratios.std().item() / math.sqrt(len(ratios))
        assert abs(ratios.mean().item() - 1) < tolerance, (count, ratios.mean().item(), tolerance)


@pytest.mark.parametrize("law", list(FOURTH_MOMENT))
def test_second_moment_of_one_linear_layer_matches_the_formula(law):
    """Logistic regression on penguins (one linear layer, q = 3 outputs, p = 4 inputs, N = 204):
    E‖ĝ‖² = ‖∇L‖² + (q + m₄ − 2) Σ_n ‖δ_n‖² (‖x_n‖² + 1), δ_n = (softmax_n − onehot_n)/N written
    out here by hand; the mean of ‖ĝ‖² over M = 4000 single estimates is within 4 standard errors."""
    data = penguins(stream(0, "data")).to(torch.device("cpu"), torch.float64)
    model = MLP(data.input_shape, data.num_classes, hidden=[])
    model.initialise(stream(0, "init"))
    model.double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    x, y = data.train.x, data.train.y
    objective = Objective(model, x, y)
    truth = Backward()(objective, params)[1]
    delta = (model(x).softmax(1) - torch.nn.functional.one_hot(y, 3)) / len(y)
    q, m4 = 3, FOURTH_MOMENT[law]
    expected = (sum(g.square().sum() for g in truth.values())
                + (q + m4 - 2) * (delta.square().sum(1) * (x.square().sum(1) + 1)).sum()).item()
    fga = ForwardActivities(tangent=law, generator=torch.Generator().manual_seed(2))
    norms = torch.stack([flat(fga(objective, params)[1], truth).square().sum() for _ in range(4000)])
    tolerance = 4 * norms.std().item() / math.sqrt(len(norms))
    assert abs(norms.mean().item() - expected) < tolerance, (norms.mean().item(), expected, tolerance)


def test_activity_perturbation_has_far_less_error_than_weight_perturbation():
    """The point of the method, from the theory: on the MLP the weight tangent's relative error
    (n + 1 ≈ 330 over n parameters) dwarfs the activities' (∝ the widths, averaged by the batch)."""
    from gradbench.estimators import Forward
    objective, params, truth = make("mlp", False)
    weights = Forward().spread(objective, params, truth)
    activities = ForwardActivities().spread(objective, params, truth)
    assert activities.variance * 10 < weights.variance


def test_models_without_a_chain_are_refused():
    from gradbench.errors import ConfigError
    from gradbench.models.functions import Beale
    with pytest.raises(ConfigError, match="forward_activities"):
        ForwardActivities().bind(Beale())
