"""The test functions (model=beale | rosenbrock | sphere): values and gradients at known points
against float64 hand computations, every estimator on them, gradient descent reaching each
minimum from its configured start, and the sphere's slowdown with dimension."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import load_run
from gradbench.models.functions import Beale, Rosenbrock, Sphere

CONF = Path(__file__).resolve().parent.parent / "conf"
PROTOCOLS = sorted(p.stem for p in (CONF / "protocol").glob("functions_*.yaml"))


def value_and_gradient(model, point):
    x = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    f = model.f(x)
    (g,) = torch.autograd.grad(f, x)
    return f.item(), g.tolist()


def beale_by_hand(x, y):
    t1, t2, t3 = 1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3
    f = t1**2 + t2**2 + t3**2
    dx = 2 * t1 * (y - 1) + 2 * t2 * (y**2 - 1) + 2 * t3 * (y**3 - 1)
    dy = 2 * t1 * x + 2 * t2 * 2 * x * y + 2 * t3 * 3 * x * y**2
    return f, [dx, dy]


def rosenbrock_by_hand(p):
    f = sum(100 * (p[i + 1] - p[i] ** 2) ** 2 + (1 - p[i]) ** 2 for i in range(len(p) - 1))
    g = [0.0] * len(p)
    for i in range(len(p) - 1):
        g[i] += -400 * p[i] * (p[i + 1] - p[i] ** 2) - 2 * (1 - p[i])
        g[i + 1] += 200 * (p[i + 1] - p[i] ** 2)
    return f, g


CASES = [
    (Beale(), [3.0, 0.5], (0.0, [0.0, 0.0])),  # the minimum
    (Beale(), [1.0, 1.0], (14.203125, [0.0, 27.75])),
    (Beale(), [1.0, 1.5], beale_by_hand(1.0, 1.5)),
    (Beale(), [-0.7, 2.3], beale_by_hand(-0.7, 2.3)),
    (Rosenbrock(), [1.0, 1.0], (0.0, [0.0, 0.0])),  # the minimum
    (Rosenbrock(), [-1.2, 1.0], (24.2, [-215.6, -88.0])),
    (Rosenbrock(dim=4), [0.3, -0.5, 1.7, 2.0], rosenbrock_by_hand([0.3, -0.5, 1.7, 2.0])),
    (Sphere(dim=3), [0.0, 0.0, 0.0], (0.0, [0.0, 0.0, 0.0])),  # the minimum
    (Sphere(dim=3), [1.0, -2.0, 0.5], (5.25, [2.0, -4.0, 1.0])),
]


@pytest.mark.parametrize("model, point, expected", CASES)
def test_value_and_gradient_match_a_float64_hand_computation(model, point, expected):
    """Tolerance: float64 rounding of sums of a few products of O(100) numbers, < 1e-12."""
    f, g = value_and_gradient(model, point)
    assert f == pytest.approx(expected[0], abs=1e-12, rel=1e-12)
    assert g == pytest.approx(expected[1], abs=1e-12, rel=1e-12)


def test_the_configured_minimum_has_zero_gap():
    for name in ("beale", "rosenbrock", "sphere"):
        node = OmegaConf.load(CONF / "model" / f"{name}.yaml")
        model = {"beale": Beale, "rosenbrock": Rosenbrock, "sphere": Sphere}[name](
            start=node.start, minimum=node.minimum, **({"dim": node.dim} if "dim" in node else {}))
        assert model.f(model.minimum).item() == 0.0


@pytest.mark.slow  # ~40 s: full GD paths to 1e-6 (make test-slow; CI runs it)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gradient_descent_reaches_each_minimum_from_its_configured_start(runner, protocol):
    (run,) = runner("train", f"+protocol={protocol}", "estimator=backward", "log_every_s=1000", "plot=false")
    _, summary = load_run(run)
    assert summary["stop_reason"] in ("max_steps", "threshold")
    final = summary["final"]["train"]
    assert final["gap"] < 1e-6 and final["distance"] < 1e-3  # f − f* < 1e-6, within 1e-3 of θ*


@pytest.mark.parametrize("estimator", ["forward", "forward_rank1", "finite_difference", "backward"])
def test_every_estimator_and_optimizer_runs_unchanged(runner, estimator):
    for optimizer in ("sgd", "adam", "nag"):
        (run,) = runner("train", "model=beale", "dataset=none", f"estimator={estimator}", f"optimizer={optimizer}",
                        "optimizer.lr=0.001", "max_steps=5", "eval_every=1", "plot=false", "log_every_s=1000")
        frame, summary = load_run(run)
        assert summary["stop_reason"] == "max_steps"
        assert {"train_loss", "train_gap", "train_distance", "train_x1", "train_x2"} <= set(frame.columns)


def test_manual_refuses_a_test_function(runner, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "model=sphere", "dataset=none", "estimator=manual", "max_steps=2")
    assert exit_info.value.code == 2 and "no hand-derived gradient for model Sphere" in capsys.readouterr().err


@pytest.mark.slow  # ~18 s: the dimension sweep (make test-slow; CI runs it)
def test_sphere_steps_grow_with_dimension_as_the_theory_says(runner):
    """Forward gradient at lr* = 1/(2(n+2)) on f = ‖x‖²: steps to f < 1e-6 from n = 16 to 64 grow
    by the theory's ratio log(f₀/ε)/−log(1 − 1/(n+2)), 1177/290 = 4.06. Tolerance 25 %: 5 seeds
    give each mean to about ±6 % (95 % CI measured here), and the theory (an expectation)
    misses the first-hitting time by under 10 % for n ≥ 16 (README, "Test functions")."""
    runner("train", "-m", "+experiment=sphere_dims", "model.dim=16,64", "seed=range(5)", "log_every_s=1000",
           f"hydra.sweep.dir={runner.cwd / 'sphere'}")
    steps = {}
    for path in (runner.cwd / "sphere").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        assert summary["stop_reason"] == "threshold"
        steps.setdefault(summary["config"]["model"]["dim"], []).append(summary["steps"])
    ratio = pd.Series(steps[64]).mean() / pd.Series(steps[16]).mean()
    assert ratio == pytest.approx(1177.3 / 290.2, rel=0.25)


def test_beale_at_its_defaults_converges_as_the_readme_says(runner):
    """`gradbench train model=beale dataset=none` (README, "Test functions": "the defaults
    converge"): the default forward gradient and SGD at conf/model_lr/beale.yaml's step and
    budget stop on f < 1e-6 (1 761 steps at seed 0), well inside the 3 000-step budget."""
    (run,) = runner("train", "model=beale", "dataset=none", "device=cpu", "plot=false", "save_model=false",
                    "log_every_s=1000")
    _, summary = load_run(run)
    assert summary["stop_reason"] == "threshold", summary["stop_reason"]
    assert summary["final"]["train"]["gap"] < 1e-6 and summary["steps"] < summary["config"]["max_steps"] == 3000


@pytest.mark.parametrize("model, steps", [("beale", 3000), ("rosenbrock", 20000), ("sphere", 5000)])
def test_a_functions_own_budget_yields_to_given_values_and_protocols(model, steps):
    """conf/model_lr/<model>.yaml sets the step, the budget and ε; a value on the command line
    and a protocol (added with +, after it in the defaults list) win over it."""
    from hydra import compose, initialize_config_dir

    from gradbench.cli import CONF, register_resolvers

    register_resolvers()
    with initialize_config_dir(CONF, version_base="1.3"):
        own = compose("config", [f"model={model}", "dataset=none"])
        given = compose("config", [f"model={model}", "dataset=none", "max_steps=7", "stop_below=null"])
        protocol = compose("config", [f"+protocol=functions_{model}"])
        plain = compose("config", [])
    assert (own.max_steps, own.stop_below) == (steps, 1e-6)
    assert (given.max_steps, given.stop_below) == (7, None)
    assert protocol.max_steps == {"beale": 5000, "rosenbrock": 20000, "sphere": 5000}[model]
    assert protocol.stop_below == (1e-6 if model == "sphere" else None)  # the paths run their whole budget
    assert (plain.max_steps, plain.stop_below) == (500, None)  # the networks keep the run keys' defaults
