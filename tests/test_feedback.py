"""Feedback alignment (FA) and direct feedback alignment (DFA), gradbench.estimators.feedback.

float64 throughout, fixed seeds, device cpu. Tolerances: FA with B = W runs backprop's own
products in backprop's order, so the MLP's gradient is equal bit for bit; a conv layer's input
gradient is the transposed convolution, which FA calls through torch.nn.grad.conv2d_input where
autograd calls convolution_backward (the same sums, maybe in another order): each entry a sum
of at most C·k² = 18 products of O(1) numbers, so |difference| ≤ 18·2u·Σ|terms| ≲ 1e-14 for these
sizes (u = 1.1e-16); 1e-12 leaves room. DFA against the hand derivation: a handful of float64
products and sums per entry, 1e-13 relative.
"""

import os
import random
import signal
import subprocess

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from conftest import FAST, GRADBENCH, run_dirs
from gradbench.errors import ConfigError
from gradbench.estimators import Backward, DirectFeedbackAlignment, FeedbackAlignment
from gradbench.models import MLP, Objective
from gradbench.models.cnn import CNN
from gradbench.models.toynet import ToyNet


def problem(model, shape, n=9, classes=3, seed=0):
    torch.manual_seed(seed)
    model = model.double()
    params = {k: p.detach() for k, p in model.named_parameters()}
    x = torch.randn(n, *shape, dtype=torch.float64)
    return model, params, Objective(model, x, torch.randint(classes, (n,)))


def seeded(cls, seed=1):
    return cls(generator=torch.Generator().manual_seed(seed))


def test_fa_with_the_weights_as_feedback_is_backprop_exactly_on_an_mlp():
    model, params, objective = problem(MLP((4,), 3, hidden=[6, 5]), (4,))
    fa = seeded(FeedbackAlignment)
    fa.bind(model)
    assert sorted(fa.feedback) == ["layers.2", "layers.4"]  # every layer but the first
    fa.feedback = {k: params[f"{k}.weight"] for k in fa.feedback}  # B_l := W_l
    loss, grads = fa(objective, params)
    ref_loss, truth = Backward()(objective, params)
    assert torch.equal(loss, ref_loss)
    for k in truth:
        assert torch.equal(grads[k], truth[k]), k


def test_fa_with_the_weights_as_feedback_is_backprop_on_a_cnn_to_rounding():
    model, params, objective = problem(CNN((1, 6, 6), 3, channels=[2, 3], hidden=[5]), (1, 6, 6))
    fa = seeded(FeedbackAlignment)
    fa.bind(model)
    assert "features.2" in fa.feedback and fa.feedback["features.2"].shape == params["features.2.weight"].shape
    fa.feedback = {k: params[f"{k}.weight"] for k in fa.feedback}
    _, grads = fa(objective, params)
    _, truth = Backward()(objective, params)
    for k in truth:
        assert (grads[k] - truth[k]).abs().max() <= 1e-12, k


def test_fa_with_random_feedback_trains_its_weights_with_the_fed_back_error():
    """The output layer's gradient is backprop's (its error is the loss's own); the hidden
    layer's differs (its error came through B, not W)."""
    model, params, objective = problem(MLP((4,), 3, hidden=[6]), (4,))
    fa = seeded(FeedbackAlignment)
    fa.bind(model)
    _, grads = fa(objective, params)
    _, truth = Backward()(objective, params)
    assert torch.equal(grads["layers.2.weight"], truth["layers.2.weight"])
    assert not torch.allclose(grads["layers.0.weight"], truth["layers.0.weight"])


def test_dfa_on_one_hidden_layer_equals_the_hand_derivation():
    """h = relu(W₁x + b₁), z = W₂h + b₂, L = mean CE: e = (softmax z − onehot y)/N, the hidden
    error δ₁ = (e B) ⊙ 1[a₁ > 0]; ∂W₁ = δ₁ᵀx, ∂b₁ = Σδ₁, ∂W₂ = eᵀh, ∂b₂ = Σe."""
    model, params, objective = problem(MLP((4,), 3, hidden=[6]), (4,))
    dfa = seeded(DirectFeedbackAlignment)
    dfa.bind(model)
    loss, grads = dfa(objective, params)
    (B,) = dfa.feedback.values()
    assert B.shape == (3, 6)
    x, y, n = objective.x, objective.y, len(objective.x)
    a1 = x @ params["layers.0.weight"].T + params["layers.0.bias"]
    h = a1.clamp(min=0)
    z = h @ params["layers.2.weight"].T + params["layers.2.bias"]
    e = (torch.softmax(z, 1) - F.one_hot(y, 3).double()) / n
    d1 = (e @ B) * (a1 > 0)
    hand = {"layers.0.weight": d1.T @ x, "layers.0.bias": d1.sum(0), "layers.2.weight": e.T @ h,
            "layers.2.bias": e.sum(0)}
    assert loss.item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-14)
    for k, v in hand.items():
        assert (grads[k] - v).abs().max() <= 1e-13 * v.abs().max(), k


def test_dfa_sends_the_output_error_to_each_hidden_layer_directly():
    """Two hidden layers, the middle one's weights changed: the first layer's gradient is
    (e B₁ ⊙ 1[a₁ > 0])ᵀ x with the new output error e, W₂ entering through e alone (no layer is
    crossed on the way back)."""
    model, params, objective = problem(MLP((4,), 3, hidden=[6, 5]), (4,))
    dfa = seeded(DirectFeedbackAlignment)
    dfa.bind(model)
    _, grads = dfa(objective, params)
    changed = {**params, "layers.2.weight": params["layers.2.weight"] * 3, "layers.2.bias": params["layers.2.bias"] + 1}
    _, again = dfa(objective, changed)
    assert not torch.equal(again["layers.4.weight"], grads["layers.4.weight"])  # the output error moved
    (b1, _) = dfa.feedback.values()
    x = objective.x
    a1 = x @ params["layers.0.weight"].T + params["layers.0.bias"]
    h1 = a1.clamp(min=0)
    h2 = (h1 @ changed["layers.2.weight"].T + changed["layers.2.bias"]).clamp(min=0)
    z = h2 @ params["layers.4.weight"].T + params["layers.4.bias"]
    e = (torch.softmax(z, 1) - F.one_hot(objective.y, 3).double()) / len(x)
    d1 = (e @ b1) * (a1 > 0)
    assert (again["layers.0.weight"] - d1.T @ x).abs().max() <= 1e-13 * (d1.T @ x).abs().max()


def test_dfa_runs_on_a_cnn_with_a_matrix_per_hidden_output():
    model, params, objective = problem(CNN((1, 6, 6), 3, channels=[2, 3], hidden=[5]), (1, 6, 6))
    dfa = seeded(DirectFeedbackAlignment)
    dfa.bind(model)
    _, grads = dfa(objective, params)
    # inputs of conv 2 (2 × 6 × 6), of fc 1 (3 × 3 × 3 after the pool, flattened), of fc 2 (5)
    assert {k: tuple(v.shape) for k, v in dfa.feedback.items()} == {
        "features.2": (3, 72), "classifier.0": (3, 27), "classifier.2": (3, 5)}
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("cls", [FeedbackAlignment, DirectFeedbackAlignment])
def test_the_feedback_matrices_come_from_the_seed(cls):
    model, params, objective = problem(MLP((4,), 3, hidden=[6, 5]), (4,))
    draws = []
    for seed in (1, 1, 2):
        est = seeded(cls, seed)
        est.bind(model)
        est(objective, params)
        draws.append(est.state_dict())
    assert draws[0].keys() == draws[2].keys() and len(draws[0]) == 2
    assert all(torch.equal(draws[0][k], draws[1][k]) for k in draws[0])
    assert not any(torch.equal(draws[0][k], draws[2][k]) for k in draws[0])
    bound = 1 / 6 ** 0.5 if cls is FeedbackAlignment else 1 / 3 ** 0.5  # 1/√fan_in
    assert draws[0]["feedback.layers.2"].abs().max() <= bound


@pytest.mark.parametrize("cls", [FeedbackAlignment, DirectFeedbackAlignment])
def test_a_model_without_a_chain_or_with_local_losses_is_refused(cls):
    with pytest.raises(ConfigError, match="local_losses"):
        seeded(cls).bind(MLP((4,), 3, hidden=[8], local_losses=True))
    with pytest.raises(ConfigError, match="chain of Linear / Conv2d"):
        seeded(cls).bind(ToyNet((4,)))


def test_the_matrices_load_back_and_a_misfit_is_refused():
    model, params, objective = problem(MLP((4,), 3, hidden=[6, 5]), (4,))
    a, b = seeded(FeedbackAlignment, 1), seeded(FeedbackAlignment, 2)
    a.bind(model), b.bind(model)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert torch.equal(a(objective, params)[1]["layers.0.weight"], b(objective, params)[1]["layers.0.weight"])
    with pytest.raises(ValueError, match="do not fit"):
        b.load_state_dict({"feedback.layers.2": torch.zeros(2, 2)})
    dfa = seeded(DirectFeedbackAlignment)  # not drawn yet (first call): takes the stored ones
    dfa.bind(model)
    stored = {k: torch.full_like(v, 0.5) for k, v in seeded_state(DirectFeedbackAlignment, model, objective, params).items()}
    dfa.load_state_dict(stored)
    dfa(objective, params)
    assert all(torch.equal(dfa.state_dict()[k], stored[k]) for k in stored)


def seeded_state(cls, model, objective, params):
    est = seeded(cls)
    est.bind(model)
    est(objective, params)
    return est.state_dict()


PENGUINS = ["model.hidden=[8,8]", "batch_size=16", "optimizer.lr=0.05", "device=cpu", "threads=1", *FAST]


@pytest.mark.parametrize("method", ["feedback_alignment", "direct_feedback_alignment"])
def test_the_checkpoint_keeps_the_matrices_and_a_resume_continues_with_them(runner, method):
    """The checkpoint holds the matrices; model.pt lists them as not part of the model; a run
    resumed from a checkpoint whose matrices were replaced trains with the replaced ones (they
    are read back, not redrawn), and an untouched one reproduces the uninterrupted run."""
    runner("train", f"estimator={method}", *PENGUINS, "max_steps=12", "hydra.run.dir=whole")
    whole = runner.cwd / "whole"
    runner("train", f"estimator={method}", *PENGUINS, "max_steps=6", "hydra.run.dir=half")
    half = runner.cwd / "half"
    state = torch.load(half / "checkpoint.pt", weights_only=True)
    assert sorted(state["estimator"]) == ["feedback.layers.2", "feedback.layers.4"]
    saved = torch.load(half / "model.pt", weights_only=True)
    assert saved["not_part_of_model"] == ["checkpoint.pt:estimator.feedback.layers.2",
                                          "checkpoint.pt:estimator.feedback.layers.4"]
    assert not any(k.startswith("feedback") for k in saved["state_dict"])
    runner("train", f"estimator={method}", *PENGUINS, "max_steps=12", "resume=true", "hydra.run.dir=half")
    # every step's batch loss and the final evaluation (step 6's row also holds the stopped half's)
    a, b = pd.read_csv(whole / "metrics.csv"), pd.read_csv(half / "metrics.csv")
    pd.testing.assert_frame_equal(a[["step", "batch_loss"]], b[["step", "batch_loss"]], check_exact=True)
    assert a["train_loss"].iloc[-1] == b["train_loss"].iloc[-1]
    final = torch.load(half / "checkpoint.pt", weights_only=True)["estimator"]
    assert all(torch.equal(final[k], state["estimator"][k]) for k in final)

    runner("train", f"estimator={method}", *PENGUINS, "max_steps=6", "hydra.run.dir=other")
    other = runner.cwd / "other"
    state = torch.load(other / "checkpoint.pt", weights_only=True)
    state["estimator"] = {k: -v for k, v in state["estimator"].items()}
    torch.save(state, other / "checkpoint.pt")
    runner("train", f"estimator={method}", *PENGUINS, "max_steps=12", "resume=true", "hydra.run.dir=other")
    final = torch.load(other / "checkpoint.pt", weights_only=True)["estimator"]
    assert all(torch.equal(final[k], state["estimator"][k]) for k in final)
    assert not pd.read_csv(other / "metrics.csv")["batch_loss"].iloc[6:].equals(
        pd.read_csv(whole / "metrics.csv")["batch_loss"].iloc[6:])


def test_a_checkpoint_with_matrices_that_do_not_fit_is_refused_before_any_write(runner, capsys):
    runner("train", "estimator=feedback_alignment", *PENGUINS, "max_steps=3", "hydra.run.dir=run")
    run = runner.cwd / "run"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["estimator"] = {"feedback.layers.2": torch.zeros(2, 2)}
    torch.save(state, run / "checkpoint.pt")
    before = (run / "metrics.csv").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        runner("train", "estimator=feedback_alignment", *PENGUINS, "max_steps=6", "resume=true", "hydra.run.dir=run")
    assert exit_info.value.code == 2
    assert "do not load" in capsys.readouterr().err
    assert (run / "metrics.csv").read_bytes() == before


def test_check_shows_the_cosine_of_fa_and_dfa_and_passes_the_exact_ones(runner, capsys):
    (run,) = runner("check", "model.hidden=[12]", "batch_size=64", "check.samples=[1,10]", "device=cpu")
    frame = pd.read_csv(run / "check.csv").set_index("estimator")
    for name in ("feedback_alignment", "direct_feedback_alignment"):
        row = frame.loc[name]
        assert row["kind"] == "biased" and row["verdict"] == "-" and "no theory" in row["note"]
        assert -1 < row["cosine"] < 1 and row["rel_error"] > 1e-3  # not ∇L, and measured
    for name in ("backward_checkpoint", "backward_accumulate"):
        assert frame.loc[name, "kind"] == "exact" and frame.loc[name, "verdict"] == "pass"
        assert frame.loc[name, "rel_error"] < 1e-14  # float64 rounding
    assert "biased by design" in capsys.readouterr().out


def test_variance_covers_the_new_estimators(runner):
    runner("variance", "variance.widths=[4,8]", "variance.depth=1", "variance.depths=[1,2]", "variance.width=4",
           "variance.samples=2", "device=cpu",
           "variance.estimators=[feedback_alignment,direct_feedback_alignment,backward_checkpoint,backward_accumulate]")
    (run,) = run_dirs(runner.cwd)
    table = pd.read_csv(run / "variance.csv").set_index(["estimator", "sweep", "width", "depth"])
    exact = table.loc[["backward_checkpoint", "backward_accumulate"], "rel_mse"]
    assert (exact < 1e-28).all()  # (1e-14)²: rounding only
    biased = table.loc[["feedback_alignment", "direct_feedback_alignment"]]
    assert (biased["rel_mse"] > 1e-6).all() and (biased["rel_mse_se"] == 0).all()  # fixed matrices: deterministic
    assert biased["theory"].isna().all()


@pytest.mark.slow  # ~1.5 min on 2 busy cores: a real kill -9 in the middle of a DFA run, then resume=RUN_DIR
def test_dfa_survives_kill_9_and_resumes_bit_identical(tmp_path, processes):
    from test_faults import start, wait_for, wait_for_rows

    args = ["train", "estimator=direct_feedback_alignment", *PENGUINS, "max_steps=400", "checkpoint_every=7"]
    subprocess.run([GRADBENCH, *args, "hydra.run.dir=whole"], cwd=tmp_path, check=True, capture_output=True)
    run = tmp_path / "run"
    process = start(processes, tmp_path, *args, f"hydra.run.dir={run}")  # the fixture kills it whatever happens
    wait_for(run / "checkpoint.pt")
    wait_for_rows(run / "metrics.csv", random.Random(0).randint(20, 300))
    assert process.poll() is None, "the run ended before the kill"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored = torch.load(run / "checkpoint.pt", weights_only=True)["estimator"]
    subprocess.run([GRADBENCH, "train", f"resume={run}"], cwd=tmp_path, check=True, capture_output=True)
    cols = ["step", "batch_loss", "train_loss", "val_loss"]
    a = pd.read_csv(tmp_path / "whole" / "metrics.csv")[cols]
    b = pd.read_csv(run / "metrics.csv")[cols]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    final = torch.load(run / "checkpoint.pt", weights_only=True)["estimator"]
    reference = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["estimator"]
    assert all(torch.equal(final[k], stored[k]) and torch.equal(final[k], reference[k]) for k in final)
