"""Zeroth-order gradients (estimators/zeroth_order.py), MeZO's in-place replay, sign descent.

Tolerances, each from the statistic's own error:
- ε → 0: d(ε) − ∇L·v for a softplus MLP in float64 is (ε²/6)∇³L[v,v,v] + O(ε⁴) (central),
  (ε/2)vᵀHv + O(ε²) (forward); rounding adds ≈ u·|L|/ε ≈ 1e-13 at the smallest ε = 1e-3, 1e-6 of
  the smallest truncation error, so the log-log slope is the order to ±0.1 (the O(ε⁴) term moves it
  by < 0.02 over ε = 0.1 … 0.001).
- unbiasedness: the mean of N estimates, coordinate by coordinate, within 4.5 of that coordinate's
  own standard error (sample std / √N); over ≤ 50 coordinates a false alarm has probability
  ≤ 50·6.8e-6 (normal tail), and the seeds are fixed. On the quadratic the difference is exact;
  on the MLP its ε-bias at ε = 1e-4 is ≈ 1e-9 relative, 1e-6 of the standard errors.
- replay: an in-place move θ + δ − 2δ + δ rounds three times, each ≤ ½ ulp of a value at most
  |θ| + 2|δ|, so every entry stays within 1.5·eps·(|θ| + 2ε|v|) (eps = torch.finfo.eps) in float64
  and float32 alike. It is NOT bit-identical: θ ↦ fl(θ + δ) is not injective (θ = 1e-20 and 2e-20
  with δ = 1e-3 land on the same float), so no in-place move without stored bits can undo itself
  exactly; about half of the entries differ by one ulp (measured below).
- replay vs stored directions: the replay's −εv point is fl(fl(θ + δ) − 2δ), within an ulp of
  the stored route's fl(θ − δ): d differs by ≈ ‖∇L‖·ulp(θ)/ε ≈ 1e-13 relative at ε = 1e-3; 1e-9 allowed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench.estimators import Forward, ZerothOrder, perturbed, seeded, zeroth_order
from gradbench.estimators.tangents import TangentSampler, densify
from gradbench.models import MLP, Objective
from gradbench.models.cnn import CNN
from gradbench.optim import SignSGD, apply


def mlp_problem(activation: str = "softplus", l2: float = 0.0, dtype=torch.float64):
    model = MLP((4,), 3, [5], activation=activation, l2=l2)
    model.initialise(torch.Generator().manual_seed(0))
    model.to(dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)
    params = {k: p.detach() for k, p in model.named_parameters()}
    return Objective(model, x, y), params


def truth_of(objective, params):
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    return dict(zip(params, torch.autograd.grad(objective.loss(leaves), list(leaves.values()))))


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in densify(grads).values()])


@pytest.mark.parametrize("difference, order", [("central", 2), ("forward", 1)])
@pytest.mark.parametrize("structure", ["dense", "rank1"])
def test_difference_tends_to_the_forward_gradient_along_the_same_direction(difference, order, structure):
    objective, params = mlp_problem()
    fg = Forward(structure=structure, engine="jvp", generator=torch.Generator().manual_seed(5))
    _, exact = fg(objective, params)
    exact = flat(exact)
    epsilons = np.logspace(-1, -3, 7)
    errors = []
    for eps in epsilons:  # the same seed: the same direction v as the forward gradient's
        zo = ZerothOrder(difference=difference, structure=structure, epsilon=float(eps),
                         generator=torch.Generator().manual_seed(5))
        errors.append((flat(zo(objective, params)[1]) - exact).norm().item())
    slope = np.polyfit(np.log(epsilons), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.1, (slope, errors)


def sample_mean(estimator, objective, params, n: int):
    draws = torch.stack([flat(estimator(objective, params)[1]) for _ in range(n)])
    return draws.mean(0), draws.std(0) / math.sqrt(n)


@pytest.mark.parametrize("difference", ["central", "forward"])
def test_unbiased_on_a_quadratic_where_the_difference_is_exact(difference):
    from gradbench.models.functions import Sphere

    model = Sphere(dim=12).double()
    model.initialise(torch.Generator().manual_seed(0))
    params = {k: p.detach() for k, p in model.named_parameters()}
    objective = Objective(model, torch.zeros(1, 0, dtype=torch.float64), None)
    truth = torch.cat([t.reshape(-1) for t in truth_of(objective, params).values()])
    zo = ZerothOrder(difference=difference, epsilon=0.3, law="rademacher",
                     generator=torch.Generator().manual_seed(2))
    mean, se = sample_mean(zo, objective, params, 3000)
    assert ((mean - truth).abs() <= 4.5 * se).all(), ((mean - truth) / se).abs().max()


@pytest.mark.parametrize("structure, law, replay", [("dense", "normal", False), ("rank1", "normal", False),
                                                    ("dense", "rademacher", False), ("rank1", "normal", True)])
def test_unbiased_on_the_mlp_coordinate_by_coordinate(structure, law, replay):
    objective, params = mlp_problem(l2=0.05)
    truth = torch.cat([t.reshape(-1) for t in truth_of(objective, params).values()])
    zo = ZerothOrder(num_queries=2, epsilon=1e-4, structure=structure, law=law, replay=replay,
                     generator=torch.Generator().manual_seed(3))
    # replay's directions are the seeded ones (its own generator path); fewer draws, as each
    # regenerates its directions (the equality with the stored version is tested exactly below)
    mean, se = sample_mean(zo, objective, params, 800 if replay else 1500)
    z = ((mean - truth) / se).abs()
    assert (z <= 4.5).all(), z.max()
    # and the test can fail: an estimate 1.5 times too long is caught at this sample size
    assert ((1.5 * mean - truth).abs() / se).max() > 4.5


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_rank1_evaluations_equal_the_perturbed_copies(model_name):
    """The fused rank-1 route (no perturbed copy of W) gives the losses of θ + c·v exactly."""
    if model_name == "mlp":
        objective, params = mlp_problem(activation="tanh", l2=0.1)
    else:
        model = CNN((1, 8, 8), 4, channels=[3, 2], hidden=[5], l2=0.1, pool_after=[1])
        model.initialise(torch.Generator().manual_seed(0))
        model.double()
        g = torch.Generator().manual_seed(1)
        objective = Objective(model, torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64),
                              torch.randint(0, 4, (5,), generator=g))
        params = {k: p.detach() for k, p in model.named_parameters()}
    assert perturbed.supports(objective.model)
    tangents = TangentSampler(params, "rank1", "normal", 3, torch.Generator().manual_seed(4))()
    for difference in ("central", "forward"):
        index, scales = ZerothOrder(num_queries=3, difference=difference, epsilon=0.01).queries(params)
        fused = perturbed.evaluate(objective.model, params, tangents, index, scales, objective.x, objective.y)
        copies = zeroth_order.evaluate(objective, params, tangents, index, scales)
        torch.testing.assert_close(fused, copies, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("difference", ["central", "forward"])
def test_replay_restores_the_parameters_within_the_stated_rounding(dtype, difference):
    objective, params = mlp_problem(dtype=dtype)
    before = {k: p.clone() for k, p in params.items()}
    eps = 1e-3
    zo = ZerothOrder(difference=difference, epsilon=eps, replay=True, chunk=7,
                     generator=torch.Generator().manual_seed(6))
    _, grads = zo(objective, params)
    differ, total = 0, 0
    for i, (name, p) in enumerate(params.items()):
        v = seeded.Seeded(grads[name].seeds, torch.ones(1, dtype=dtype), i, "normal", "dense", 7, p.shape).dense()
        bound = 1.5 * torch.finfo(dtype).eps * (before[name].abs() + 2 * eps * v.abs())
        assert ((p - before[name]).abs() <= bound).all(), name
        differ += (p != before[name]).sum().item()
        total += p.numel()
    assert differ < total  # most entries come back exactly; the rest by at most the bound


def test_replay_takes_the_same_step_as_the_stored_direction_version():
    objective, params = mlp_problem(l2=0.05)
    start = {k: p.clone() for k, p in params.items()}
    eps, k = 1e-3, 3
    zo = ZerothOrder(num_queries=k, epsilon=eps, replay=True, chunk=5, generator=torch.Generator().manual_seed(7))
    _, grads = zo(objective, params)
    seeds = next(iter(grads.values())).seeds
    # the stored version: each direction regenerated whole, the differences taken on copies of θ
    directions = [{name: seeded.Seeded([s], torch.ones(1, dtype=torch.float64), i, "normal", "dense", 5,
                                       p.shape).dense() for i, (name, p) in enumerate(start.items())} for s in seeds]
    stored = {name: torch.zeros_like(p) for name, p in start.items()}
    for v in directions:
        d = (objective.loss({n: start[n] + eps * v[n] for n in start}) -
             objective.loss({n: start[n] - eps * v[n] for n in start})) / (2 * eps)
        for name in stored:
            stored[name] += d / k * v[name]
    replayed = densify(grads)
    scale = max(s.abs().max().item() for s in stored.values())
    for name in stored:
        torch.testing.assert_close(replayed[name], stored[name], rtol=0, atol=1e-9 * scale)
    # the update, applied tensor by tensor from the seeds, equals a dense SGD step
    sgd = torch.optim.SGD(list(params.values()), lr=0.1)
    apply(sgd, params, grads)
    for name, p in params.items():
        torch.testing.assert_close(p, start[name] - 0.1 * stored[name], rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("make", [lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
                                  lambda ps: torch.optim.Adam(ps, lr=0.01),
                                  lambda ps: SignSGD(ps, lr=0.01, momentum=0.5)],
                         ids=["zo_momentum", "zo_adam", "zo_sign"])
def test_zeroth_order_composes_with_stateful_optimizers(make):
    """ZO-Bench's variants: the seeded estimate, handed to momentum SGD, Adam or sign descent,
    steps exactly as its dense form does, and the composition trains (the loss falls)."""
    objective, params = mlp_problem()
    twin = {k: p.clone() for k, p in params.items()}
    opt, opt_twin = make(list(params.values())), make(list(twin.values()))
    first = objective.loss(params).item()
    for step in range(60):
        zo = ZerothOrder(num_queries=4, epsilon=1e-4, replay=True, generator=torch.Generator().manual_seed(step))
        _, grads = zo(objective, params)
        dense = densify(grads)
        for k in params:  # the twin starts from the same (replay-rounded) point
            twin[k].copy_(params[k])
        apply(opt, params, grads)
        apply(opt_twin, twin, dense)
        for k in params:
            assert torch.equal(params[k], twin[k]), k
    assert objective.loss(params).item() < 0.8 * first


def test_sign_sgd_steps_by_the_sign_of_its_momentum():
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    opt = SignSGD([p], lr=0.1, momentum=0.5)
    grads = [torch.tensor([1.0, -1.0, 0.0]), torch.tensor([-3.0, 0.5, 0.0])]
    m = torch.zeros(3, dtype=torch.float64)
    expected = p.clone()
    for g in grads:
        p.grad = g.double()
        opt.step()
        m = 0.5 * m + 0.5 * g.double()
        expected -= 0.1 * m.sign()
    torch.testing.assert_close(p, expected, rtol=0, atol=0)
    assert expected[2] == 3.0  # sign(0) = 0: no signal, no move


def test_passes_of_the_zeroth_order_options():
    model = mlp_problem()[0].model
    assert ZerothOrder(num_queries=3).passes(model).forward == 6
    assert ZerothOrder(num_queries=3, difference="forward").passes(model).forward == 4


@pytest.mark.parametrize("key, value, message", [("num_queries", 0, "estimator.num_queries"),
                                                 ("epsilon", 0.0, "estimator.epsilon"),
                                                 ("difference", "backward", "estimator.difference"),
                                                 ("law", "uniform", "estimator.law"),
                                                 ("structure", "rank2", "estimator.structure")])
def test_bad_options_are_refused_by_name(key, value, message):
    from gradbench.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        ZerothOrder(**{key: value})


def test_local_losses_are_refused_before_any_step():
    from gradbench.errors import ConfigError

    with pytest.raises(ConfigError, match="model.local_losses=true"):
        ZerothOrder().bind(MLP((4,), 3, [5], local_losses=True))


def test_a_replay_run_trains_end_to_end(runner):
    from tests.conftest import FAST

    (run,) = runner("train", "dataset=penguins", "model=mlp", "estimator=zeroth_order_replay",
                    "optimizer=sign_sgd", "optimizer.momentum=0.9", "max_steps=4", "device=cpu", "diagnose=true", *FAST)
    import json
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4
    assert summary["passes"] == {"forward": 2.0, "forward_mode": 0.0, "backward": 0.0}


def test_variance_sweep_puts_the_measured_error_beside_its_theory(runner):
    """Same seed, same directions: the zeroth-order rows equal the forward gradient's up to the
    O(ε²) difference error (1e-6 relative at ε = 1e-3, 1e-4 allowed), and both sit within 4 s.e.
    of the theory (the ε-bias is 1e-6 of it)."""
    (run,) = runner("variance", "dataset=penguins", "model=mlp", "model.activation=tanh", "device=cpu",
                    "variance.estimators=[forward,zeroth_order,zeroth_order_replay]", "variance.widths=[8]",
                    "variance.depths=[1]", "variance.samples=200", "variance.batch_size=32")
    import pandas as pd
    table = pd.read_csv(run / "variance.csv")
    for _, row in table.iterrows():
        assert abs(row["rel_mse"] - row["theory"]) <= 4 * row["rel_mse_se"], row.to_dict()
    by = table.set_index(["sweep", "estimator"])["rel_mse"]
    for sweep in ("width", "depth"):
        assert by[sweep, "zeroth_order"] == pytest.approx(by[sweep, "forward"], rel=1e-4)


def test_check_lists_zeroth_order_beside_its_theory(runner):
    """gradbench check: the zeroth-order rows' single-estimate error and cosine beside theory,
    within tests/test_check.py's bounds (RMS of 100 estimates: a factor 1.5; mean cosine: ±30 %)."""
    (run,) = runner("check", "dataset=penguins", "model=mlp", "model.hidden=[12]", "model.activation=tanh",
                    "batch_size=64", "check.samples=[1,100]", "device=cpu")
    import pandas as pd
    table = pd.read_csv(run / "check.csv")
    for name in ("zeroth_order", "zeroth_order_replay"):
        row = table[(table["estimator"] == name) & (table["kind"] == "each")].iloc[0]
        assert row["expected_rel_error"] / 1.5 <= row["rel_error"] <= 1.5 * row["expected_rel_error"]
        assert 0.7 * row["expected_cosine"] <= row["cosine"] <= 1.3 * row["expected_cosine"]


def test_replay_step_peaks_at_an_evaluations_memory():
    """The point of replay: a step (estimate + SGD update) allocates no more than a plain loss
    evaluation of the batch (CPU profiler: allocation sizes are deterministic, so the bound is
    exact up to the chunk buffer, 4 KiB here against the evaluation's 32 KiB); the stored-direction
    version holds a whole direction (one 784 × 256 weight alone is 800 KiB). Measured: evaluation
    32 KiB, replay 32 KiB, stored 1.5 MiB."""
    from gradbench.commands.bench import peak_memory_mb

    model = MLP((784,), 10, [256])
    model.initialise(torch.Generator().manual_seed(0))
    params = {k: p.detach() for k, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    objective = Objective(model, torch.randn(16, 784, generator=g), torch.randint(0, 10, (16,), generator=g))

    def evaluation():
        with torch.no_grad():
            objective.loss(params)

    def step_of(estimator):
        sgd = torch.optim.SGD(list(params.values()), lr=1e-6)

        def step():
            apply(sgd, params, estimator(objective, params)[1])
        step()  # first-call allocations out of the way, as for the evaluation
        return step

    evaluation()
    cpu = torch.device("cpu")
    base = peak_memory_mb(evaluation, cpu)
    replay = peak_memory_mb(step_of(ZerothOrder(replay=True, chunk=1024, generator=torch.Generator().manual_seed(0))), cpu)
    stored = peak_memory_mb(step_of(ZerothOrder(generator=torch.Generator().manual_seed(0))), cpu)
    assert replay <= 1.1 * base, (replay, base)
    assert stored > 5 * base, (stored, base)


def test_a_resumed_replay_run_continues_exactly(runner):
    """Stopped after 3 steps and resumed to 6, a replay run's losses equal an uninterrupted
    run's bit for bit: the seeds come from the checkpointed generator, and the warm-up of a
    resumed run moves no parameter (ZerothOrder.warm_up)."""
    import pandas as pd

    args = ["dataset=penguins", "model=mlp", "estimator=zeroth_order_replay", "optimizer.lr=0.01", "device=cpu",
            "plot=false", "log_every_s=1000", "dtype=float32"]
    (whole,) = runner("train", *args, "max_steps=6")
    (part,) = runner("train", *args, "max_steps=3")
    runner("train", f"resume={part}", "max_steps=6")
    a, b = pd.read_csv(whole / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    assert list(b["step"]) == [1, 2, 3, 4, 5, 6]
    assert a["batch_loss"].tolist() == b["batch_loss"].tolist()
    end_a = torch.load(whole / "model.pt", weights_only=False)["state_dict"]
    end_b = torch.load(part / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)  # the parameters too, bit for bit


@pytest.mark.parametrize("overrides, message", [
    (["estimator=zeroth_order", "estimator.epsilon=-1.0"], "estimator.epsilon must be a number > 0, got -1.0"),
    (["estimator=zeroth_order", "estimator.num_queries=0"], "estimator.num_queries must be an integer >= 1, got 0"),
    (["estimator=zeroth_order", "estimator.difference=backward"],
     "estimator.difference must be one of central | forward, got 'backward'"),
    (["estimator=zeroth_order_replay", "estimator.replay=maybe"], "estimator.replay must be true or false"),
    (["estimator=local_guess", "model.local_losses=true", "estimator.scaling=layer"],
     "estimator.scaling must be one of network | block, got 'layer'"),
    (["estimator=local_guess"], "estimator=local_guess guesses each block's gradient from its local loss"),
    (["optimizer=sign_sgd", "optimizer.momentum=1.0"], "optimizer.momentum must be in [0, 1), got 1.0"),
])
def test_bad_input_gets_one_line_and_exit_2_before_any_step(runner, capsys, overrides, message):
    from tests.conftest import FAST

    with pytest.raises(SystemExit) as exit_info:
        runner("train", "dataset=penguins", "model=mlp", "device=cpu", *overrides, *FAST)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(runner.cwd.rglob("metrics.csv"))
