"""Gradient estimators: at parameters θ, on one batch, the loss and a gradient estimate.

    estimate(objective, params) -> (loss, grads)   # grads: same keys as params, each a tensor
                                                   # of its shape or a factored LowRank of it

One module per method, one YAML per option in conf/estimator/ (`_target_:
gradbench.estimators.<Class>`); the training loop calls every estimator the same way.

    base.py               the Estimator seam (bind, __call__, warm_up)
    backward.py           backpropagation: the exact gradient
    forward.py            forward gradient, tangent on the weights (dense | rank1; K combined by mean | project)
    forward_mode.py       the fused forward-mode pass the weight-tangent estimator runs
    activities.py         forward gradient, tangent on each layer's output (activity perturbation, Ren et al. 2023)
    tangents.py           tangent structures and laws, factored estimates, second moments
    manual.py             hand-derived backprop (no autograd)
    finite_difference.py  central differences
    zeroth_order.py       zeroth-order (SPSA) differences along random directions; MeZO's in-place replay
    perturbed.py          loss evaluations at rank-1 perturbed weights (no perturbed copy of a weight)
    seeded.py             directions regenerated from seeds, chunk by chunk (replay), and their estimates
    local_guess.py        local-guess forward gradient: local-loss gradients scaled by one JVP (Fournier et al. 2023)
    feedback.py           feedback alignment (FA) and direct feedback alignment (DFA): fixed random feedback
    memory_backprop.py    backprop at matched memory: activation checkpointing, gradient accumulation
    probes.py             diagnostics of an estimate against the true gradient (diagnose=true, check)
"""

from gradbench.estimators.base import Estimator
from gradbench.estimators.backward import Backward
from gradbench.estimators.finite_difference import FiniteDifference
from gradbench.estimators.forward import Forward
from gradbench.estimators.manual import Manual
from gradbench.estimators.activities import ForwardActivities
from gradbench.estimators.zeroth_order import ZerothOrder
from gradbench.estimators.local_guess import LocalGuess

from gradbench.estimators.feedback import DirectFeedbackAlignment, FeedbackAlignment
from gradbench.estimators.memory_backprop import BackwardAccumulate, BackwardCheckpoint

__all__ = ["Estimator", "Backward", "Forward", "ForwardActivities", "Manual", "FiniteDifference", "ZerothOrder",
           "LocalGuess", "FeedbackAlignment", "DirectFeedbackAlignment", "BackwardCheckpoint", "BackwardAccumulate"]
