"""Per-coordinate statistical bounds for the unbiasedness tests (a helper, not a test module).

An estimator is unbiased when E g_i = ∇L_i in every coordinate i. From B independent draws of
an estimate (each draw may itself be the mean of m single estimates), each coordinate's mean
has standard error s_i/√B, s_i that coordinate's own sample standard deviation. A bound on the
whole norm (√(E‖g‖²/M)) is about √n times too wide for one coordinate: on the 131-parameter MLP
it admits a 2× bias. Here each coordinate is held to z·s_i/√B, with z chosen for the number of
coordinates (Bonferroni): the chance that ANY coordinate of an unbiased estimator exceeds its
bound is at most ALPHA. The tests are seeded, so a pass or a failure is reproducible; ALPHA is
what makes the bound a derived one rather than a tuned one.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

ALPHA = 1e-3  # family-wise false-alarm rate over all coordinates of one test


def bonferroni_z(coordinates: int, draws: int, alpha: float = ALPHA) -> float:
    """Two-sided critical value for `coordinates` simultaneous tests at family-wise level `alpha`.

    The standardised error (mean − truth)/(s/√B) is Student-t with ν = B − 1 degrees of freedom
    (normal draws; the central limit theorem for the means of many single estimates); its quantile
    is the normal one z plus the first Cornish–Fisher term (z³ + z)/(4ν), which for ν ≥ 50 and
    z ≤ 5 is within 1 % of the exact t quantile.
    """
    z = NormalDist().inv_cdf(1 - alpha / (2 * coordinates))
    nu = draws - 1
    return z + (z ** 3 + z) / (4 * nu)


def assert_unbiased(draws: torch.Tensor, truth: torch.Tensor, *, scale: float = 1.0, alpha: float = ALPHA) -> None:
    """draws: B × n independent estimates of `scale`·truth (a flat n-vector). Fails naming the
    worst coordinate when |mean_i − scale·truth_i| > z·s_i/√B + rounding in any coordinate.

    Rounding: float64 sums of a few thousand O(‖truth‖) terms, 1e-12 of the largest coordinate,
    so a coordinate that every draw gives exactly (s_i = 0) must match to rounding.
    """
    b, n = draws.shape
    assert b >= 30, "a per-coordinate standard deviation needs at least 30 draws"
    z = bonferroni_z(n, b, alpha)
    target = scale * truth
    error = (draws.mean(0) - target).abs()
    bound = z * draws.std(0) / math.sqrt(b) + 1e-12 * target.abs().max()
    worst = int(torch.argmax(error / bound))
    assert bool((error <= bound).all()), (
        f"coordinate {worst}: |mean − truth| = {error[worst].item():.3g} > {bound[worst].item():.3g} "
        f"(z = {z:.2f} over {n} coordinates, {b} draws; truth {target[worst].item():.3g})")
