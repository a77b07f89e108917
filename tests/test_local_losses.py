"""Local losses (model.local_losses=true): every block trains on its own head's loss with its
input detached, the last block on the network's loss; every estimator works with it.

Checks, in float64 on tiny models: each block's gradient (through the estimator seam) equals
autograd's gradient of that block's local loss computed on its own from the block's detached
input; changing any later block leaves an earlier block's gradient bit for bit unchanged (no
gradient reaches a block from later ones); prediction is the network's last layer.
"""

import pytest
import torch
from torch.nn import functional as F

from gradbench.estimators import Backward, FiniteDifference, Forward
from gradbench.run.job import stream
from gradbench.models import MLP, Objective
from gradbench.models.cnn import CNN
from tests.bounds import assert_unbiased
from tests.conftest import FAST, load_run

MODELS = {"mlp": lambda g: MLP((1, 6, 6), 4, hidden=[6, 4], activation="tanh", local_losses=True, local_groups=g),
          "cnn": lambda g: CNN((2, 6, 6), 4, channels=[4, 2], pool_after=[2], hidden=[6], local_losses=True,
                               local_groups=g)}
CASES = [(name, groups) for name in MODELS for groups in (1, 2)]


def make(name: str, groups: int = 1):
    model = MODELS[name](groups)
    model.initialise(stream(0, "init"))
    model.double()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, *((1, 6, 6) if name == "mlp" else (2, 6, 6)), generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=generator)
    return model, x, y


def block_parameters(model, block) -> list[str]:
    prefixes = [p for p, _ in [*block.stages, *(block.head or [])]]
    return [n for n, _ in model.named_parameters() if any(n.startswith(p + ".") for p in prefixes)]


@pytest.mark.parametrize("name, groups", CASES)
def test_each_block_gets_autograds_gradient_of_its_own_local_loss(name, groups):
    """Block by block, the model's own modules (not the functional path) compute the block's
    input without gradient, then the block and its head, then autograd's gradient of that
    block's loss alone (with G groups: the sum of the G heads' cross-entropies): equal to the
    estimator's to float64 rounding (a few ulps of O(1) sums)."""
    model, x, y = make(name, groups)
    params = {k: p.detach() for k, p in model.named_parameters()}
    _, grads = Backward()(Objective(model, x, y), params)
    blocks, h, covered = model.blocks(), x, []
    assert len(blocks) == (3 if name == "mlp" else 4) and blocks[-1].head is None
    for block in blocks:
        out = h.detach()
        for _, m in block.stages:
            out = m(out)
        h = out
        for _, m in block.head or []:
            out = m(out)
        names = block_parameters(model, block)
        local = (sum(F.cross_entropy(out[:, g], y) for g in range(groups)) if block.head
                 else F.cross_entropy(out, y))
        reference = torch.autograd.grad(local, [dict(model.named_parameters())[n] for n in names])
        for n, ref in zip(names, reference):
            torch.testing.assert_close(grads[n], ref, rtol=1e-12, atol=1e-14)
        covered += names
    assert sorted(covered) == sorted(params)  # every parameter belongs to exactly one block


@pytest.mark.parametrize("name, groups", CASES)
def test_no_block_receives_gradient_from_a_later_one(name, groups):
    """Redraw every parameter of the blocks after block b (their layers and heads): block b's
    gradient stays bit-identical, for every b."""
    model, x, y = make(name, groups)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    _, before = Backward()(Objective(model, x, y), params)
    blocks = model.blocks()
    generator = torch.Generator().manual_seed(9)
    for b in range(len(blocks) - 1):
        later = {n for block in blocks[b + 1:] for n in block_parameters(model, block)}
        changed = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) if k in later else v
                   for k, v in params.items()}
        _, after = Backward()(Objective(model, x, y), changed)
        for n in block_parameters(model, blocks[b]):
            assert torch.equal(after[n], before[n]), n
        assert any(not torch.equal(after[n], before[n]) for n in later)  # the later blocks did change


def test_prediction_is_the_last_layer_and_heads_are_parameters():
    model, x, _ = make("mlp")
    plain = MLP((1, 6, 6), 4, hidden=[6, 4], activation="tanh")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("heads.")})
    plain.double()
    assert torch.equal(model(x), plain(x))
    heads = [n for n, _ in model.named_parameters() if n.startswith("heads.")]
    assert heads == ["heads.0.0.weight", "heads.0.0.bias", "heads.1.0.weight", "heads.1.0.bias"]


def test_groups_must_divide_every_block():
    from gradbench.errors import ConfigError
    with pytest.raises(ConfigError, match="model.local_groups"):
        MLP((1, 6, 6), 4, hidden=[6, 4], local_losses=True, local_groups=4)


def test_weight_tangents_estimate_the_local_objective():
    """Forward gradients on the weights (the jvp route: detach drops the tangent in forward mode
    too): 20 000 estimates as B = 100 means of 200; in every coordinate the grand mean lies within
    z·s_i/√B of the local-loss gradient, s_i the coordinate's own sample standard deviation, z
    Bonferroni's for all coordinates (tests/bounds.py)."""
    model, x, y = make("mlp")
    params = {k: p.detach() for k, p in model.named_parameters()}
    objective = Objective(model, x, y)
    _, truth = Backward()(objective, params)
    forward = Forward(engine="jvp", num_tangents=200, generator=torch.Generator().manual_seed(4))
    draws = torch.stack([torch.cat([e[k].flatten() for k in truth])
                         for e in (forward(objective, params)[1] for _ in range(100))])
    assert_unbiased(draws, torch.cat([v.flatten() for v in truth.values()]))


def test_finite_differences_refuse_local_losses():
    """Differences of the objective's value give its total derivative, which local losses are
    not (their gradient stops at each block): refused, naming the estimator."""
    from gradbench.errors import ConfigError
    model, _, _ = make("mlp")
    with pytest.raises(ConfigError, match="finite_difference"):
        FiniteDifference().bind(model)


@pytest.mark.parametrize("estimator", ["backward", "forward_activities", "forward", "manual", "finite_difference"])
def test_a_run_with_local_losses(runner, estimator):
    """Through the CLI on penguins: heads counted in the summary and saved in model.pt; manual
    and finite differences refuse in one line before any work."""
    args = ["train", "device=cpu", "model.local_losses=true", f"estimator={estimator}", "max_steps=5", *FAST]
    if estimator in ("manual", "finite_difference"):
        with pytest.raises(SystemExit) as e:
            runner(*args)
        assert e.value.code == 2
        return
    (run,) = runner(*args)
    _, summary = load_run(run)
    state = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert {"heads.0.0.weight", "heads.1.0.weight"} <= set(state)
    assert summary["num_params"] == sum(v.numel() for v in state.values())
