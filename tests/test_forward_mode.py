"""The fused forward-mode pass equals torch.func.jvp on the same tangents, for every model
option and every layer type, dense and rank-1, one and several tangents (float64).

Tolerance: float64 rounding. Each d_k is a sum over at most a few thousand products of O(1)
terms through a handful of layers, so the two orders of summation differ by well under
1e-12 relative to max |d| (unit roundoff 1.1e-16 × terms × depth); the loss is computed by
the same ops (1e-14).
"""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradbench.estimators import forward_mode
from gradbench.errors import ConfigError
from gradbench.estimators import Forward
from gradbench.estimators.forward import _jvp
from gradbench.estimators.manual import DERIVATIVES
from gradbench.models import ACTIVATIONS, Objective
from gradbench.estimators.tangents import STRUCTURES, TangentSampler, densify

CONF = Path(__file__).resolve().parent.parent / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# Models that are no chain of layers, with the unlabelled inputs they take (jvp route); every
# other model option is a classifier on a small image (1 × 8 × 8) and takes the fused pass.
UNLABELLED = {"toynet": (3,), "beale": (0,), "rosenbrock": (0,), "sphere": (0,)}


def model_option(name: str, **overrides):
    """conf/model/<name>.yaml (with its defaults) built on small inputs, float64, seeded."""
    node = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    for parent in node.pop("defaults", []):
        if parent != "_self_":
            node = OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{parent}.yaml"), node)
    node = OmegaConf.merge(node, overrides)
    if name == "cnn_paper":  # the paper's widths, narrowed so the jvp reference stays quick
        node = OmegaConf.merge(node, {"channels": [6, 6, 6, 6], "hidden": [20]})
    shape = UNLABELLED.get(name, (1, 8, 8))
    model = instantiate(node, input_shape=shape, num_classes=None if name in UNLABELLED else 5)
    model.initialise(torch.Generator().manual_seed(0))
    return model.double(), shape


def batch(shape, labelled: bool):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, *shape, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 5, (6,), generator=generator) if labelled else None


CASES = [(name, {}) for name in MODELS if name not in UNLABELLED]
CASES += [("mlp", {"activation": act, "l2": 0.1}) for act in ACTIVATIONS]
CASES += [("cnn", {"activation": act, "l2": 0.1, "pool_after": [1, 2]}) for act in ACTIVATIONS]


def test_every_layer_type_of_the_models_is_covered():
    """A layer type without a forward-mode rule would silently fall back to jvp: fail instead."""
    for name, overrides in CASES:
        model, _ = model_option(name, **overrides)
        assert forward_mode.supports(model), name
    assert set(map(type, (m() for m in ACTIVATIONS.values()))) <= set(DERIVATIVES)


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{o}" for n, o in CASES])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("count", [1, 3])
def test_fused_pass_equals_jvp(name, overrides, structure, count):
    model, shape = model_option(name, **overrides)
    params = {k: p.detach() for k, p in model.named_parameters()}
    x, y = batch(shape, labelled=True)
    tangents = TangentSampler(params, structure, "normal", count, torch.Generator().manual_seed(2))()
    loss, d = forward_mode.directional(model, params, tangents, x, y)
    ref_loss, ref_d = _jvp(Objective(model, x, y), params, tangents)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-14)
    assert d.shape == ref_d.shape == (count,)
    assert torch.allclose(d, ref_d, rtol=0, atol=1e-12 * ref_d.abs().max().item())


@pytest.mark.parametrize("name", [n for n in MODELS if n in UNLABELLED])
def test_a_model_without_stages_uses_jvp_and_refuses_fused(name):
    model, shape = model_option(name)
    assert not forward_mode.supports(model)
    params = {k: p.detach() for k, p in model.named_parameters()}
    x, _ = batch(shape, labelled=False)
    loss, grads = Forward(structure="rank1", generator=torch.Generator().manual_seed(0))(
        Objective(model, x, None), params)
    assert torch.isfinite(loss) and set(grads) == set(params)
    with pytest.raises(ConfigError, match=f"estimator.engine=fused has no forward-mode rules for model {type(model).__name__}"):
        Forward(engine="fused").bind(model)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_fused_and_jvp_engines_give_the_same_estimate(structure):
    """Same seed, same tangents: the two engines' estimates agree to rounding."""
    model, shape = model_option("cnn")
    params = {k: p.detach() for k, p in model.named_parameters()}
    objective = Objective(model, *batch(shape, labelled=True))
    estimates = []
    for engine in ("fused", "jvp"):
        forward = Forward(num_tangents=2, structure=structure, engine=engine,
                          generator=torch.Generator().manual_seed(4))
        estimates.append(torch.cat([g.flatten() for g in forward(objective, params)[1].values()
                                    if isinstance(g, torch.Tensor)]))
    assert torch.allclose(*estimates, rtol=0, atol=1e-12 * estimates[1].abs().max().item())


@pytest.mark.slow  # torch.compile takes ~20 s on a 2-core CPU
def test_the_compiled_fused_pass_gives_the_eager_estimate():
    model, shape = model_option("mlp")
    params = {k: p.detach() for k, p in model.named_parameters()}
    objective = Objective(model, *batch(shape, labelled=True))
    results = []
    for compile in (False, True):
        forward = Forward(structure="rank1", compile=compile, generator=torch.Generator().manual_seed(4))
        loss, grads = forward(objective, params)
        results.append((loss, torch.cat([g.flatten() for g in densify(grads).values()])))
    (loss, eager), (compiled_loss, compiled) = results
    assert compiled_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    assert torch.allclose(compiled, eager, rtol=0, atol=1e-12 * eager.abs().max().item())
