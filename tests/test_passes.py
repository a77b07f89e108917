"""Estimator.passes: what every estimator says one step costs is what it does.

Each estimator runs once on a small MLP (float64) with its entry points wrapped in counters:
loss evaluations (Objective.loss, or the fused rank-1 evaluation's queries), forward-mode passes
(torch.func.jvp calls times the tangents they carry, or the fused pass's tangents) and backward
passes (torch.func.grad / grad_and_value calls). A stated count must equal the counted one; the
counts are exact integers, so equality is exact. FG-A's ½ backward (the weight-gradient
contraction) is not a call of autograd and is checked as stated only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradbench.estimators import (Backward, FiniteDifference, Forward, ForwardActivities, LocalGuess, Manual,
                                  ZerothOrder, activities, backward, forward, forward_mode, local_guess, perturbed)
from gradbench.estimators.base import Passes
from gradbench.models import MLP, Objective

CONF = Path(__file__).resolve().parent.parent / "conf" / "estimator"


class Counts:
    def __init__(self) -> None:
        self.forward = self.forward_mode = self.backward = 0

    def passes(self) -> Passes:
        return Passes(self.forward, self.forward_mode, self.backward)


class CountingObjective(Objective):
    """An Objective whose loss evaluations are counted (torch.func transforms call it once per pass)."""

    counts: Counts

    def loss(self, params):
        self.counts.forward += 1
        return self.model.objective(params, self.x, self.y)


def problem(local_losses: bool = False):
    model = MLP((4,), 3, [5, 4], local_losses=local_losses)
    model.initialise(torch.Generator().manual_seed(0))
    model.double()
    g = torch.Generator().manual_seed(1)
    objective = CountingObjective(model, torch.randn(6, 4, generator=g, dtype=torch.float64),
                                  torch.randint(0, 3, (6,), generator=g))
    objective.counts = Counts()
    return objective, {k: p.detach() for k, p in model.named_parameters()}


def count(monkeypatch, module, name, counts: Counts, kind: str, tangents=lambda args: 1):
    """Wrap module.name so that each call adds tangents(args) to counts.<kind>."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        setattr(counts, kind, getattr(counts, kind) + tangents(args))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def run(estimator, objective, params) -> Passes:
    estimator.bind(objective.model)
    estimator(objective, params)
    return objective.counts.passes()


def test_backward(monkeypatch):
    objective, params = problem()
    count(monkeypatch, backward, "grad_and_value", objective.counts, "backward")
    assert run(Backward(), objective, params) == Backward().passes(objective.model)


def test_manual(monkeypatch):
    objective, params = problem()
    counts = objective.counts
    estimator = Manual()
    estimator.bind(objective.model)
    formula = estimator._bound[1]

    def counted(*args):
        counts.forward += 1
        counts.backward += 1  # the formula is one taped forward sweep and one backward sweep
        return formula(*args)

    estimator._bound = (objective.model, counted)
    estimator(objective, params)
    assert counts.passes() == estimator.passes(objective.model)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("engine", ["fused", "jvp"])
def test_forward(monkeypatch, k, engine):
    objective, params = problem()
    counts = objective.counts
    module, name = (forward_mode, "directional") if engine == "fused" else (forward, "_jvp")
    count(monkeypatch, module, name, counts, "forward_mode", lambda args: len(next(iter(args[2].values()))))
    estimator = Forward(num_tangents=k, engine=engine, generator=torch.Generator().manual_seed(0))
    passes, stated = run(estimator, objective, params), estimator.passes(objective.model)
    assert passes.forward_mode == stated.forward_mode == k
    # the loss is evaluated only as the forward-mode pass's own primal (jvp calls it once)
    assert passes.forward == (0 if engine == "fused" else 1) and stated.forward == 0
    assert passes.backward == stated.backward == 0


def test_forward_activities(monkeypatch):
    objective, params = problem()
    draws = []
    estimator = ForwardActivities(num_tangents=2, generator=torch.Generator().manual_seed(0))
    original = estimator.draw
    estimator.draw = lambda shape, like: draws.append(1) or original(shape, like)
    calls = Counts()
    count(monkeypatch, activities, "directional", calls, "forward_mode")
    run(estimator, objective, params)
    stated = estimator.passes(objective.model)
    assert calls.forward_mode == 1 and len(draws) == 3  # one pass, one draw of K tangents per layer
    assert stated == Passes(forward_mode=2, backward=0.5) and objective.counts.forward == 0


def test_finite_difference(monkeypatch):
    objective, params = problem()
    counts = objective.counts
    original = Objective.loss  # the estimator evaluates through an Objective of its own (float64)

    def counted(self, p):
        counts.forward += 1
        return original(self, p)

    monkeypatch.setattr(Objective, "loss", counted)
    estimator = FiniteDifference(chunk=1)  # one perturbed vector per vmapped call: calls = evaluations
    assert run(estimator, objective, params) == estimator.passes(objective.model)


@pytest.mark.parametrize("difference", ["central", "forward"])
@pytest.mark.parametrize("structure, replay", [("dense", False), ("rank1", False), ("dense", True)])
def test_zeroth_order(monkeypatch, difference, structure, replay):
    objective, params = problem()
    counts = objective.counts
    count(monkeypatch, perturbed, "evaluate", counts, "forward", lambda args: len(args[4]))
    estimator = ZerothOrder(num_queries=3, difference=difference, structure=structure, replay=replay,
                            generator=torch.Generator().manual_seed(0))
    if structure == "rank1":
        assert perturbed.supports(objective.model)  # the fused route, counted by its queries
    assert run(estimator, objective, params) == estimator.passes(objective.model)


@pytest.mark.parametrize("scaling", ["network", "block"])
def test_local_guess(monkeypatch, scaling):
    objective, params = problem(local_losses=True)
    counts = objective.counts
    count(monkeypatch, local_guess, "grad", counts, "backward")
    count(monkeypatch, local_guess, "jvp", counts, "forward_mode")
    # block scaling vmaps one jvp over B tangents: count the tangents the vmapped call carries
    original_vmap = local_guess.vmap

    def vmap(f):
        inner = original_vmap(f)

        def call(tangents):
            counts.forward_mode += len(next(iter(tangents.values()))) - 1  # the traced jvp counts 1
            return inner(tangents)
        return call

    monkeypatch.setattr(local_guess, "vmap", vmap)
    estimator = LocalGuess(scaling=scaling)
    assert run(estimator, objective, params) == estimator.passes(objective.model)


def test_every_estimator_option_states_its_passes():
    """No option of conf/estimator/ leaves Estimator.passes at its default None."""
    model = MLP((4,), 3, [5], local_losses=False)
    for path in sorted(CONF.glob("*.yaml")):
        node = OmegaConf.load(path)
        for parent in node.pop("defaults", []):
            if parent != "_self_":
                node = OmegaConf.merge(OmegaConf.load(CONF / f"{parent}.yaml"), node)
        estimator = instantiate(node)
        assert isinstance(estimator.passes(model), Passes), path.stem


def test_summary_and_report_tables_carry_the_passes(runner, tmp_path):
    from conftest import FAST

    for estimator in ("backward", "zeroth_order"):
        runner("train", "dataset=penguins", "model=logreg", f"estimator={estimator}", "max_steps=2", "device=cpu",
               "hydra.run.dir=runs/" + estimator, *FAST)
    out = tmp_path / "report"
    from gradbench.commands.report import main

    assert main([str(tmp_path / "runs"), "--no-plots", "--out", str(out)]) == 0
    import pandas as pd
    table = pd.read_csv(out / "table.csv").set_index("estimator")
    assert table.loc["backward", ["passes_forward", "passes_forward_mode", "passes_backward"]].tolist() == [1, 0, 1]
    assert table.loc["zeroth_order", ["passes_forward", "passes_forward_mode", "passes_backward"]].tolist() == [2, 0, 0]
    assert "passes_forward" in (out / "table.md").read_text()


def test_bench_csv_carries_the_passes(runner):
    from conftest import run_dirs
    import pandas as pd

    runner("bench", "bench.estimators=[backward,zeroth_order_replay,forward]", "bench.rounds=1", "bench.steps=1",
           "estimator.num_tangents=3", "device=cpu", "log_every_s=1000")
    (run,) = run_dirs(runner.cwd)
    table = pd.read_csv(run / "bench.csv").set_index("estimator")
    columns = ["passes_forward", "passes_forward_mode", "passes_backward"]
    assert table.loc["backward", columns].tolist() == [1, 0, 1]
    assert table.loc["zeroth_order_replay", columns].tolist() == [2, 0, 0]
    assert table.loc["forward", columns].tolist() == [0, 3, 0]  # the run's estimator, K = 3 as overridden
