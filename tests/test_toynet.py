"""Report 002's toy network: its printed numbers, explicit matrices, and its gradient descent.

The report prints x, A, B, the gradients with respect to A, B, C and the loss 44.0612, but
not C. What x, A, B determine is z = sigmoid(x A) + x B. The printed ∂L/∂C = zᵀ (2·out) is
then rank one with left factor z (a check of z), and gives out, so the loss ‖out‖² follows
from x, A, B and that gradient alone; so does ∂L/∂A = xᵀ(∂L/∂z ⊙ σ'(xA)) from ∂L/∂z, which
∂L/∂B = xᵀ ∂L/∂z gives. Loss and gradients depend on C only through out = z C and C·out, so
any C with those two (a 4-dimensional family) reproduces every printed number: we build one.
"""

import pytest
import torch

from conftest import FAST, load_run
from gradbench.errors import ConfigError
from gradbench.estimators import Manual
from gradbench.models import Objective
from gradbench.models.toynet import ToyNet

D = dict(dtype=torch.float64)
X = torch.tensor([0.8311474366942035, 0.8439379477805831, 0.8388421326877166], **D)
A = torch.tensor([[0.25129816473730215, 0.45937691785148405, 0.8846707302565932],
                  [0.6881257902175721, 0.4289543556188269, 0.1266690829131678],
                  [0.7904021199234799, 0.2987045256966764, 0.931388707459593]], **D)
B = torch.tensor([[0.16394946490626883, 0.6448089772297525, 0.21880857546460808],
                  [0.6799780955590629, 0.11349175428867442, 0.5273784554376459],
                  [0.8979181883772658, 0.6031537907940281, 0.41638580170599393]], **D)
GRAD = {  # the report's hand-derived gradients (torch.backward agreed to the 4 digits it printed)
    "A": torch.tensor([[2.164841106297983, 2.6681140650967543, 1.2098228357464476],
                       [2.1981558022807874, 2.7091736184596087, 1.2284407748869652],
                       [2.1848830308131784, 2.69281525010984, 1.2210232780700203]], **D),
    "B": torch.tensor([[14.089372084700397, 13.535386460481702, 8.792896243733097],
                       [14.306193146636476, 13.743682248855672, 8.928209946118045],
                       [14.21981035611282, 13.660695977626299, 8.87430016860969]], **D),
    "C": torch.tensor([[14.65610661598256, 18.529402674179796, 18.78898960873385],
                       [12.038309499435838, 15.219777671936383, 15.432998545805004],
                       [11.676555948682925, 14.762420381467074, 14.969233926447846]], **D),
}
LOSS = 44.061213140343526


def z_of_report() -> torch.Tensor:
    """z from x, A, B through the model itself: with C = I the output is z."""
    model = ToyNet((3,), A=A.tolist(), B=B.tolist(), C=torch.eye(3).tolist())
    model.initialise(torch.Generator().manual_seed(0))
    return model.double()(X[None])[0].detach()


def test_loss_and_gradient_of_a_follow_from_x_a_b_and_the_printed_gradients():
    z = z_of_report()
    two_out = GRAD["C"] / z[:, None]  # ∂L/∂C_ij = z_i · 2 out_j: every row the same
    assert torch.allclose(two_out, two_out[0].expand(3, 3), rtol=1e-13, atol=0)
    assert (two_out[0] / 2).square().sum().item() == pytest.approx(LOSS, rel=1e-13)
    d_z = GRAD["B"] / X[:, None]  # ∂L/∂B_ij = x_i · ∂L/∂z_j: every row the same
    assert torch.allclose(d_z, d_z[0].expand(3, 3), rtol=1e-13, atol=0)
    assert (z @ d_z[0] / 2).item() == pytest.approx(LOSS, rel=1e-13)  # z·∂L/∂z = 2 z C·out = 2‖out‖²
    s = torch.sigmoid(X @ A)
    assert torch.allclose(torch.outer(X, d_z[0] * s * (1 - s)), GRAD["A"], rtol=1e-13, atol=0)


def consistent_c() -> torch.Tensor:
    """The least-norm C with z C = out and C·out = ∂L/∂z / 2 (row-major unknowns C_ij)."""
    z = z_of_report()
    out, half_d_z = GRAD["C"][0] / (2 * z[0]), GRAD["B"][0] / (2 * X[0])
    rows, rhs = [], []
    for j in range(3):  # Σ_i z_i C_ij = out_j
        rows.append(torch.zeros(3, 3, **D).index_put_((torch.arange(3), torch.tensor(j)), z).flatten())
        rhs.append(out[j])
    for i in range(3):  # Σ_j C_ij out_j = ∂L/∂z_i / 2
        rows.append(torch.zeros(3, 3, **D).index_put_((torch.tensor(i), torch.arange(3)), out).flatten())
        rhs.append(half_d_z[i])
    system, rhs = torch.stack(rows), torch.stack(rhs)
    c = torch.linalg.pinv(system) @ rhs
    assert (system @ c - rhs).abs().max() < 1e-12  # consistent: the report's numbers fit together
    return c.view(3, 3)


def test_report_002_loss_and_gradients_with_a_consistent_c(runner):
    """Through the CLI: `gradbench check` on the report's x, A, B (and a C as above)."""
    matrix = lambda m: str(m.tolist()).replace(" ", "")  # noqa: E731
    (run,) = runner("check", "model=toynet", "dataset=toy_inputs", f"dataset.x=[{matrix(X)}]",
                    f"model.A={matrix(A)}", f"model.B={matrix(B)}", f"model.C={matrix(consistent_c())}",
                    "check.samples=[1,10]")
    import json

    reference = json.loads((run / "grads.json").read_text())
    assert reference["loss"] == pytest.approx(LOSS, rel=1e-13)
    for name, printed in GRAD.items():
        assert torch.allclose(torch.tensor(reference["grads"][name], **D), printed, rtol=1e-12, atol=0)
    objective = Objective(ToyNet((3,)).double(), X[None], None)
    loss, grads = Manual()(objective, {"A": A, "B": B, "C": consistent_c()})
    assert loss.item() == pytest.approx(LOSS, rel=1e-13)
    assert all(torch.allclose(grads[k], GRAD[k], rtol=1e-12, atol=0) for k in GRAD)


def test_init_is_uniform_and_explicit_matrices_replace_only_their_own():
    drawn = ToyNet((4,))
    drawn.initialise(torch.Generator().manual_seed(5))
    given = ToyNet((4,), B=[[2.0] * 4] * 4)
    given.initialise(torch.Generator().manual_seed(5))
    for p in drawn.parameters():
        assert p.min() >= 0 and p.max() < 1
    assert torch.equal(given.A, drawn.A) and torch.equal(given.C, drawn.C)
    assert torch.equal(given.B, torch.full((4, 4), 2.0))


def test_a_matrix_of_the_wrong_size_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.A must be 3×3"):
        ToyNet((3,), A=[[1.0, 2.0], [3.0, 4.0]])


def test_report_002_gradient_descent_drops_the_loss(runner):
    """lr 0.01, N = 1000 U(0, 1) inputs, full batch (batch-averaged gradient), 100 steps."""
    (run,) = runner("train", "model=toynet", "dataset=toy_inputs", "estimator=manual",
                    "optimizer.lr=0.01", "max_steps=100", *FAST)
    metrics, summary = load_run(run)
    assert summary["stop_reason"] == "max_steps"
    assert "train_accuracy" not in metrics and "test_loss" not in metrics
    start, end = summary["initial"]["train"]["loss"], summary["final"]["train"]["loss"]
    assert end < 0.01 * start
    assert metrics["batch_loss"].is_monotonic_decreasing
