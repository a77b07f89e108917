"""Backprop at matched memory (gradbench.estimators.memory_backprop): checkpointed and
accumulated backprop give backprop's gradient, for less memory.

Tolerances (float64, u = 1.1e-16, fixed seeds, device cpu):
- checkpointing recomputes a segment's forward pass with the same kernels on the same inputs,
  and the backward pass then runs the same products in the same order: equal bit for bit.
- accumulation sums the per-example terms of each gradient entry in another grouping (within
  a micro-batch, then across them, weighted n_i/n): each entry differs from backprop's by at
  most about N·u·Σ_n |per-example term| (the standard bound of a reordered sum of N terms; the
  weights n_i/n and the 1/n_i of each part's mean add a few u each), computed here from the
  per-example gradients (torch.func.vmap), times 4 for those few extra roundings.
"""

import pandas as pd
import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.nn.functional import cross_entropy

from conftest import run_dirs
from gradbench.errors import ConfigError
from gradbench.estimators import Backward, BackwardAccumulate, BackwardCheckpoint
from gradbench.estimators.memory_backprop import cut
from gradbench.models import MLP, Objective
from gradbench.models.cnn import CNN

U = torch.finfo(torch.float64).eps / 2


def problem(model, shape, n=13, classes=3, seed=0):
    torch.manual_seed(seed)
    model = model.double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    x = torch.randn(n, *shape, dtype=torch.float64)
    return model, params, Objective(model, x, torch.randint(classes, (n,)))


MODELS = {"mlp": (lambda: MLP((5,), 3, hidden=[7, 6, 5, 4], l2=0.01), (5,)),
          "cnn": (lambda: CNN((1, 6, 6), 3, channels=[2, 3], hidden=[5]), (1, 6, 6))}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("segments", ["sqrt", "per_block", 1, 2, 99])
def test_checkpointed_backprop_is_backprop_bit_for_bit(model, segments):
    build, shape = MODELS[model]
    model, params, objective = problem(build(), shape)
    est = BackwardCheckpoint(segments)
    est.bind(model)
    loss, grads = est(objective, params)
    ref_loss, truth = Backward()(objective, params)
    assert torch.equal(loss, ref_loss)
    for k in truth:
        assert torch.equal(grads[k], truth[k]), k


def test_segments_cut_the_chain_at_block_boundaries():
    model = MLP((5,), 3, hidden=[4] * 8)  # 9 weight layers
    stages = model.stages()
    count = lambda s: [sum(isinstance(m, torch.nn.Linear) for _, m in part) for part in cut(stages, s)]  # noqa: E731
    assert count("per_block") == [1] * 9
    assert count("sqrt") == [3, 3, 3]  # √9 segments of √9 layers
    assert count(2) == [4, 5] and count(1) == [9] and count(50) == [1] * 9
    assert sum(len(part) for part in cut(stages, "sqrt")) == len(stages)  # every stage, once, in order
    assert [p for part in cut(stages, 4) for p, _ in part] == [p for p, _ in stages]
    # the checkpointed segments' forward runs twice: 6 of 9 layers for sqrt
    assert BackwardCheckpoint("sqrt").passes(model).forward == pytest.approx(1 + 6 / 9)


def test_a_bad_segments_value_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"estimator.segments must be sqrt \| per_block or an integer >= 1"):
        BackwardCheckpoint("half")
    with pytest.raises(ConfigError, match="estimator.micro_batches must be an integer >= 1"):
        BackwardAccumulate(0)
    with pytest.raises(ConfigError, match="local_losses"):
        BackwardCheckpoint().bind(MLP((4,), 3, hidden=[8], local_losses=True))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("micro_batches", [1, 2, 4, 13, 40])
def test_accumulated_backprop_is_backprop_to_rounding(model, micro_batches):
    build, shape = MODELS[model]
    model, params, objective = problem(build(), shape)
    est = BackwardAccumulate(micro_batches)
    loss, grads = est(objective, params)
    ref_loss, truth = Backward()(objective, params)
    n = len(objective.x)

    # each example's own gradient (the penalty's left out: it does not depend on the examples)
    per_example = vmap(grad(lambda p, x, y: cross_entropy(functional_call(model, p, (x[None],)), y[None])),
                       in_dims=(None, 0, 0))(params, objective.x, objective.y)
    assert abs(loss.item() - ref_loss.item()) <= 4 * n * U * abs(ref_loss.item())
    for k in truth:
        bound = 4 * n * U * (per_example[k].abs().sum(0) / n + truth[k].abs())
        assert ((grads[k] - truth[k]).abs() <= bound).all(), (k, (grads[k] - truth[k]).abs().max())
    if micro_batches == 1:
        assert all(torch.equal(grads[k], truth[k]) for k in truth)  # one part: backprop itself


def test_accumulation_works_on_local_losses_too():
    model, params, objective = problem(MLP((5,), 3, hidden=[6, 6], local_losses=True), (5,))
    _, grads = BackwardAccumulate(3)(objective, params)
    _, truth = Backward()(objective, params)
    for k in truth:
        assert (grads[k] - truth[k]).abs().max() <= 1e-14 * max(1.0, truth[k].abs().max().item()), k


def test_both_train_through_the_cli_like_backprop(runner):
    common = ["model.hidden=[8,8]", "batch_size=16", "max_steps=5", "device=cpu", "plot=false", "log_every_s=1000",
              "eval_every=5"]
    for est in ("backward", "backward_checkpoint estimator.segments=2",
                "backward_accumulate estimator.micro_batches=3"):
        name, *extra = est.split()
        runner("train", f"estimator={name}", *extra, *common)
    tables = [pd.read_csv(r / "metrics.csv") for r in run_dirs(runner.cwd)]
    for t in tables[1:]:  # float64 is not asked: float32, so accumulation may differ in the last bits
        assert (t["batch_loss"] - tables[0]["batch_loss"]).abs().max() <= 1e-5
        assert (t["train_loss"].dropna() - tables[0]["train_loss"].dropna()).abs().max() <= 1e-5


def test_a_bad_option_is_refused_before_any_work(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "estimator=backward_checkpoint", "estimator.segments=half")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "estimator.segments must be sqrt | per_block or an integer >= 1, got 'half'" in err
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "estimator=backward_accumulate", "estimator.micro_batches=0")
    assert exit_info.value.code == 2
    assert "estimator.micro_batches must be an integer >= 1, got 0" in capsys.readouterr().err
