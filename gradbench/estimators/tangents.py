"""Tangent structures for the forward gradient, and estimates that stay factored.

A tangent v spans ALL parameters jointly. Its structure says how it is drawn:

    dense   i.i.d. zero-mean, unit-variance entries over every parameter (Baydin et al. 2022)
    rank1   every weight with ≥ 2 dims (a linear W: out × in; a conv kernel: out × in × kh × kw)
            takes a·bᵀ, a over the out dim and b over the rest, a and b independent with
            i.i.d. zero-mean, unit-variance entries; biases and vectors dense

Both have E[v] = 0 and E[v vᵀ] = I (for a·bᵀ: E[a_i b_j a_k b_l] = δ_ik δ_jl), so
g = (∇L·v)·v stays an unbiased estimate of ∇L. The point of rank1 is cost: x·(a bᵀ)ᵀ =
(x·b)·aᵀ is O(batch·(in + out)) instead of O(batch·in·out), and its estimate d·a·bᵀ is
itself rank-1, kept factored (`LowRank`) up to an update that can use it (optim.apply).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gradbench.errors import choose

STRUCTURES = ("dense", "rank1")
FOURTH_MOMENT = {"normal": 3.0, "rademacher": 1.0}  # E[v⁴] of each tangent law (E v² = 1)
Params = dict[str, Tensor]


@dataclass
class Rank1:
    """K rank-1 tangents of one weight: a_k b_kᵀ, a: K × out, b: K × (numel / out)."""

    a: Tensor
    b: Tensor
    shape: torch.Size

    def dense(self) -> Tensor:
        """The K tangents as K × shape (for the torch.func reference path and for tests)."""
        return torch.einsum("ko,kr->kor", self.a, self.b).reshape(len(self.a), *self.shape)


@dataclass
class LowRank:
    """A matrix estimate Σ_k u_k w_kᵀ of `shape` (u: K × out, w: K × rest), never formed
    unless an optimizer needs it dense."""

    u: Tensor
    w: Tensor
    shape: torch.Size

    def dense(self) -> Tensor:
        return (self.u.T @ self.w).view(self.shape)

    def add_to(self, p: Tensor, alpha: float) -> None:
        """p += alpha·Σ_k u_k w_kᵀ in one fused matrix product (addmm_ on p's 2-d view)."""
        p.view(self.shape[0], -1).addmm_(self.u.T, self.w, alpha=alpha)


Tangent = Tensor | Rank1  # one parameter's K tangents
Estimate = Tensor | LowRank  # one parameter's gradient estimate (or a seeded.Seeded: any object
# with dense() and add_to(p, alpha) is a factored estimate the optimizer can apply)


def dense(g: Estimate) -> Tensor:
    """An estimate as a dense tensor of its parameter's shape (a factored one, LowRank or
    gradbench.estimators.seeded.Seeded, formed by its own `dense`)."""
    return g if isinstance(g, Tensor) else g.dense()


def densify(grads: dict[str, Estimate]) -> Params:
    return {k: dense(g) for k, g in grads.items()}


def is_factored(p: Tensor, structure: str) -> bool:
    return structure == "rank1" and p.dim() >= 2


class TangentSampler:
    """Draws K tangents for `params` in ONE generator call into one preallocated flat buffer
    (K × total entries), cut into per-parameter views: dense blocks, or a and b of rank-1 ones.

    The buffer is reused from step to step; estimates built from it copy what they keep.
    """

    def __init__(self, params: Params, structure: str, law: str, count: int,
                 generator: torch.Generator | None) -> None:
        choose("estimator.structure", structure, dict.fromkeys(STRUCTURES))
        choose("estimator.tangent", law, FOURTH_MOMENT)
        self.law, self.count, self.generator = law, count, generator
        self.layout = []  # (name, shape, sizes of its pieces)
        for name, p in params.items():
            sizes = (p.shape[0], p.numel() // p.shape[0]) if is_factored(p, structure) else (p.numel(),)
            self.layout.append((name, p.shape, sizes))
        total = sum(sum(sizes) for *_, sizes in self.layout)
        first = next(iter(params.values()))
        self.buffer = torch.empty(count, total, device=first.device, dtype=first.dtype)
        self.views = self._cut()

    def _cut(self) -> dict[str, Tangent]:
        pieces = iter(self.buffer.split([s for *_, sizes in self.layout for s in sizes], dim=1))
        views: dict[str, Tangent] = {}
        for name, shape, sizes in self.layout:
            if len(sizes) == 2:
                views[name] = Rank1(next(pieces), next(pieces), shape)
            else:
                views[name] = next(pieces).view(self.count, *shape)
        return views

    def matches(self, params: Params) -> bool:
        first = next(iter(params.values()))
        return (self.buffer.device == first.device and self.buffer.dtype == first.dtype
                and [(n, s) for n, s, _ in self.layout] == [(n, p.shape) for n, p in params.items()])

    def __call__(self) -> dict[str, Tangent]:
        if self.law == "normal":
            self.buffer.normal_(generator=self.generator)
        else:  # Rademacher ±1: a fair coin per entry, in place (random_ is 4× faster than bernoulli_)
            self.buffer.random_(0, 2, generator=self.generator).mul_(2).sub_(1)
        return self.views


COMBINES = ("mean", "project")


def coefficients(d: Tensor, tangents: dict[str, Tangent], combine: str) -> Tensor:
    """The weights c of g = Σ_k c_k v_k from the K directional derivatives d_k = ∇L·v_k.

    mean: c = d / K, the average of the K unbiased estimates d_k v_k.
    project: c = (BᵀB)⁻¹ d with B = [v_1 … v_K], so g = B(BᵀB)⁻¹Bᵀ∇L is the orthogonal projection
    of ∇L on the tangents' span (Flügel et al. 2024). The K × K Gram matrix comes from the
    blocks: ⟨v_i, v_j⟩ = Σ_p ⟨v_ip, v_jp⟩, and for rank-1 blocks ⟨a_i b_iᵀ, a_j b_jᵀ⟩ =
    (a_i·a_j)(b_i·b_j), never forming a dense tangent.
    """
    if combine == "mean":
        return d / len(d)
    gram = sum((v.a @ v.a.T) * (v.b @ v.b.T) if isinstance(v, Rank1) else v.flatten(1) @ v.flatten(1).T
               for v in tangents.values())
    return torch.linalg.solve(gram, d)


def projection_spread(n: int, k: int) -> tuple[float, float, float]:
    """(mean factor, relative variance, E cos) of the projection g = P∇L on the span of K
    tangents with a rotation-invariant law (i.i.d. normal, dense) over n parameters.

    P is the projection on a uniformly random K-dimensional subspace, so E P = (K/n) I:
    E g = (K/n)∇L, a scaled, not an unbiased, estimate. P² = P gives E‖g‖² = E ∇LᵀP∇L =
    (K/n)‖∇L‖², so E‖g − E g‖² = (K/n)(1 − K/n)‖∇L‖². cos(g, ∇L) = ‖P∇L‖/‖∇L‖ = √β with
    β ~ Beta(K/2, (n − K)/2), whose mean is Γ((K+1)/2)Γ(n/2) / (Γ(K/2)Γ((n+1)/2)).
    Rank-1 or Rademacher tangents are not rotation invariant: there E P is only close to (K/n) I.
    """
    share = k / n
    cosine = math.exp(math.lgamma((k + 1) / 2) + math.lgamma(n / 2) - math.lgamma(k / 2) - math.lgamma((n + 1) / 2))
    return share, share * (1 - share), cosine


def estimate(c: Tensor, tangents: dict[str, Tangent]) -> dict[str, Estimate]:
    """g = Σ_k c_k v_k (c from `coefficients`), rank-1 blocks kept factored."""
    scale = c
    out: dict[str, Estimate] = {}
    for name, v in tangents.items():
        if isinstance(v, Rank1):
            out[name] = LowRank(v.a * scale[:, None], v.b.clone(), v.shape)
        else:
            out[name] = torch.tensordot(scale, v, dims=1)
    return out


def second_moment(structure: str, law: str, truth: Params) -> float:
    """E‖g‖² of one estimate g = (∇L·v)·v (K = 1), from the gradient ∇L = `truth`.

    The blocks p of v (a dense block of n_p entries, or a rank-1 block a·bᵀ of out × in) are
    independent with E[v_p v_pᵀ] = I and E‖v_p‖² = n_p, so with G_p = ∇L's block and n = Σ n_p:

        E‖g‖² = Σ_p ‖G_p‖² (n − n_p + c_p),   c_p = E[(G_p·v_p)² ‖v_p‖²] / ‖G_p‖²,

    c_p = m₄ + n_p − 1 for a dense block (m₄ = E v⁴: 3 normal, 1 Rademacher), and for a
    rank-1 block c_p = (m₄ + out − 1)(m₄ + in − 1) (condition on b, apply the dense formula
    to a over out entries with G b, then to b over in entries with GᵀG). So dense v gives
    E‖g‖² = (n + m₄ − 1)‖∇L‖²; rank1 adds (m₄ − 1)(out + in + m₄ − 2) per matrix, weighted by
    its share of ‖∇L‖² (normal: 2(out + in + 1); Rademacher: 0). With K tangents averaged,
    E‖g_K − ∇L‖² = (E‖g‖² − ‖∇L‖²) / K.
    """
    m4 = FOURTH_MOMENT[law]
    n = sum(g.numel() for g in truth.values())
    total = 0.0
    for g in truth.values():
        n_p = g.numel()
        if is_factored(g, structure):
            rows, cols = g.shape[0], n_p // g.shape[0]
            c = (m4 + rows - 1) * (m4 + cols - 1)
        else:
            c = m4 + n_p - 1
        total += g.double().square().sum().item() * (n - n_p + c)
    return total
