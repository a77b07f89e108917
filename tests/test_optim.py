"""Optimizers (gradbench/optim.py, conf/optimizer/): manual SGD is torch's SGD to the bit,
NAG is the textbook FISTA iteration, and the lr schedules drive every optimizer."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gradbench.cli import CONF
from gradbench.optim import ManualSGD, exponential_decay
from conftest import FAST, load_run

OPTIMIZERS = sorted(p.stem for p in (Path(CONF) / "optimizer").glob("*.yaml"))
PRESETS = {  # report 001's five models: lr, momentum, weight decay
    "r001_m1": (0.01, 0.0, 0.0), "r001_m2": (0.01, 0.0, 0.01), "r001_m3": (0.01, 0.85, 0.0),
    "r001_m4": (0.01, 0.85, 0.01), "r001_m5": (0.05, 0.85, 0.01)}
# 30 epochs of shuffled mini-batches on penguins' ~205 training rows (4 steps per epoch, the
# last one partial), backprop, float32: the same seed gives both implementations the same start
# and the same batches, so any difference comes from the update arithmetic alone.
PENGUINS_30_EPOCHS = ["estimator=backward", "max_epochs=30", "max_steps=null", "batch_size=64",
                      "eval_every=1000", "plot=false", "log_every_s=1000"]


def trained_state(runner, *overrides: str) -> tuple[dict, dict]:
    """(state_dict of model.pt, composed optimizer config) of one CLI training run."""
    (run,) = runner("train", *PENGUINS_30_EPOCHS, *overrides)
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    return torch.load(run / "model.pt")["state_dict"], OmegaConf.to_container(config.optimizer)


@pytest.mark.parametrize("preset, nesterov", [(p, False) for p in PRESETS] + [("r001_m4", True)])
def test_manual_sgd_is_bit_identical_to_torch_sgd(runner, preset, nesterov):
    extra = [f"+optimizer/preset={preset}", f"optimizer.nesterov={str(nesterov).lower()}"]
    ours, ours_cfg = trained_state(runner, "optimizer=manual_sgd", *extra)
    torchs, torch_cfg = trained_state(runner, "optimizer=sgd", *extra)
    lr, momentum, weight_decay = PRESETS[preset]
    for cfg in (ours_cfg, torch_cfg):  # the preset reached both implementations
        assert (cfg["lr"], cfg["momentum"], cfg["weight_decay"], cfg["nesterov"]) == \
            (lr, momentum, weight_decay, nesterov)
    assert ours.keys() == torchs.keys()
    for name in ours:
        assert torch.equal(ours[name], torchs[name]), name


def random_problem(seed: int, device: str = "cpu") -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Three parameter tensors and 40 steps of random gradients for them."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 7)]
    params = [torch.randn(s, generator=g).to(device) for s in shapes]
    grads = [[torch.randn(s, generator=g).to(device) for s in shapes] for _ in range(40)]
    return params, grads


def run_steps(make, params, grads, rate: float) -> list[torch.Tensor]:
    params = [p.clone() for p in params]
    optimizer = make(params)
    scheduler = exponential_decay(optimizer, rate)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g
        optimizer.step()
        scheduler.step()
    return params


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_manual_sgd_bits_match_both_torch_code_paths_under_a_schedule(foreach, nesterov):
    # torch picks its for-loop path on CPU and its foreach path on CUDA; on CPU the foreach
    # ops fall back to per-tensor kernels, so this pins both Python paths to the same bits.
    params, grads = random_problem(0)
    kwargs = dict(lr=0.05, momentum=0.85, weight_decay=0.01, nesterov=nesterov)
    ours = run_steps(lambda p: ManualSGD(p, **kwargs), params, grads, rate=0.02)
    torchs = run_steps(lambda p: torch.optim.SGD(p, **kwargs, foreach=foreach), params, grads, rate=0.02)
    assert all(torch.equal(a, b) for a, b in zip(ours, torchs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch's default foreach path)")
def test_manual_sgd_bits_match_torch_sgd_on_cuda():
    params, grads = random_problem(0, "cuda")
    kwargs = dict(lr=0.05, momentum=0.85, weight_decay=0.01, nesterov=True)
    ours = run_steps(lambda p: ManualSGD(p, **kwargs), params, grads, rate=0.02)
    torchs = run_steps(lambda p: torch.optim.SGD(p, **kwargs), params, grads, rate=0.02)
    assert all(torch.equal(a, b) for a, b in zip(ours, torchs))


def quadratic(n: int = 20, condition: float = 1e3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(θ) = ½θᵀAθ − bᵀθ in float64, A = Q diag(1 … 1/condition) Qᵀ (L = 1), minimiser θ*."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, -math.log10(condition), n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b, torch.linalg.solve(a, b)


def build_optimizer(name: str, lr: float, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer as the CLI builds it: conf/optimizer/<name>.yaml with an lr override."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"optimizer={name}", f"optimizer.lr={lr}"])
    return instantiate(cfg.optimizer, params=params)


def descend(name: str, lr: float, steps: int, rate: float = 0.0) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Iterates y_1 … y_{steps+1} of a configured optimizer on the quadratic, from θ = 0."""
    a, b, _ = quadratic()
    theta = torch.zeros(len(b), dtype=torch.float64)
    optimizer = build_optimizer(name, lr, [theta])
    scheduler = exponential_decay(optimizer, rate)
    iterates = [theta.clone()]
    for _ in range(steps):
        theta.grad = a @ theta - b
        optimizer.step()
        scheduler.step()
        iterates.append(theta.clone())
    return iterates, optimizer


@pytest.mark.parametrize("rate", [0.0, 0.01])
def test_nag_matches_textbook_fista_step_by_step(rate):
    a, b, _ = quadratic()
    ours, _ = descend("nag", 1.0, 100, rate)
    # Beck & Teboulle 2009 (FISTA, no prox), written out directly: gradient at the look-ahead y.
    x_prev = y = torch.zeros(len(b), dtype=torch.float64)
    t = 1.0
    for k in range(100):
        assert torch.allclose(ours[k], y, rtol=1e-12, atol=1e-12), k
        x = y - math.exp(-rate * k) * (a @ y - b)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = x + (t - 1) / t_next * (x - x_prev)
        x_prev, t = x, t_next
    assert torch.allclose(ours[100], y, rtol=1e-12, atol=1e-12)


def test_nag_converges_faster_than_gd_within_the_textbook_bounds():
    a, b, optimum = quadratic()
    f = lambda theta: 0.5 * theta @ a @ theta - b @ theta  # noqa: E731
    lr, steps, r2 = 1.0, 300, float(optimum @ optimum)  # lr = 1/L; ‖θ_0 − θ*‖² with θ_0 = 0
    gd, _ = descend("gd", lr, steps)
    nag, optimizer = descend("nag", lr, steps)
    x = optimizer.state[optimizer.param_groups[0]["params"][0]]["x"]  # x_{steps+1}
    gap_gd, gap_nag, gap_x = (float(f(v) - f(optimum)) for v in (gd[-1], nag[-1], x))
    assert gap_gd <= r2 / (2 * lr * steps)            # GD: O(1/k)
    assert gap_x <= 2 * r2 / (lr * (steps + 1) ** 2)   # FISTA, Thm. 4.4: O(1/k²)
    assert gap_nag < gap_gd / 100 and gap_x < gap_gd / 100


def test_nag_trains_with_the_forward_estimator(runner):
    (run,) = runner("train", "model=logreg", "estimator=forward", "optimizer=nag", "optimizer.lr=0.01",
                    "max_steps=200", *FAST)
    metrics, summary = load_run(run)
    assert summary["stop_reason"] == "max_steps"
    assert summary["final"]["train"]["loss"] < 0.5 * summary["initial"]["train"]["loss"]
    assert metrics["batch_loss"].notna().all()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_exponential_schedule_drives_every_optimizer(runner, optimizer):
    (run,) = runner("train", "model=logreg", "estimator=backward", f"optimizer={optimizer}",
                    "optimizer.lr=0.2", "schedule=exponential", "schedule.rate=0.05", "max_steps=30", *FAST)
    metrics, _ = load_run(run)
    expected = 0.2 * (-0.05 * (metrics["step"] - 1)).map(math.exp)  # lr_i = lr_0·e^(−k·i), i = 0, 1, …
    pd.testing.assert_series_equal(metrics["lr"], expected, check_names=False, rtol=1e-12, atol=0)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer=manual_sgd", "optimizer.nesterov=true"], "optimizer.nesterov needs optimizer.momentum > 0"),
    (["optimizer=manual_sgd", "optimizer.momentum=-0.5"], "optimizer.momentum must be in [0, 1), got -0.5"),
    (["optimizer=manual_sgd", "optimizer.weight_decay=-1"], "optimizer.weight_decay must be >= 0"),
])
def test_bad_optimizer_settings_are_one_clear_line(runner, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_:
        runner("train", *overrides, *FAST)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
