"""Seeded directions: a random direction over all parameters that is never stored, only
regenerated from a seed, tensor by tensor and chunk by chunk (MeZO's in-place replay,
Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes").

    add_direction(p, index, seed, law, structure, chunk, scale)   # p += scale·v_p, in place
    Seeded(seeds, coefficients, index, ...)                        # an estimate Σ_k c_k v_k of one tensor

Tensor `index` of direction `seed` draws from its own generator, seeded by a mix of the two,
so any one tensor's block regenerates without replaying the others (the optimizer applies the
update tensor by tensor). A dense block is drawn `chunk` entries at a time into one small
buffer; a rank-1 block a·bᵀ draws a and b (out + in numbers) and is added with addr_, in place,
never as a matrix. Same law and structure as gradbench.estimators.tangents: E v = 0, E v vᵀ = I.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gradbench.estimators.tangents import is_factored

MASK = (1 << 63) - 1


def tensor_seed(seed: int, index: int) -> int:
    """splitmix64 of (seed, index): a well-mixed seed per (direction, tensor), so that streams
    of neighbouring indices share no structure."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & MASK


def _fill(t: Tensor, law: str, generator: torch.Generator) -> Tensor:
    if law == "normal":
        return t.normal_(generator=generator)
    return t.random_(0, 2, generator=generator).mul_(2).sub_(1)  # Rademacher ±1


def add_direction(p: Tensor, index: int, seed: int, law: str, structure: str, chunk: int,
                  scale: float | Tensor) -> None:
    """p += scale·v_p in place, v_p tensor `index`'s block of direction `seed`; at most `chunk`
    entries of it (or a rank-1 block's a and b) exist at a time. The same call sequence
    regenerates the same numbers on the same device."""
    generator = torch.Generator(device=p.device).manual_seed(tensor_seed(seed, index))
    if is_factored(p, structure):
        flat = p.view(p.shape[0], -1)
        a = _fill(torch.empty(flat.shape[0], device=p.device, dtype=p.dtype), law, generator)
        b = _fill(torch.empty(flat.shape[1], device=p.device, dtype=p.dtype), law, generator)
        flat.addr_(a.mul_(scale), b)  # W += (scale·a) bᵀ element by element, no product matrix
        return
    flat = p.view(-1)
    buffer = torch.empty(min(chunk, flat.numel()), device=p.device, dtype=p.dtype)
    for start in range(0, flat.numel(), chunk):
        piece = _fill(buffer[: min(chunk, flat.numel() - start)], law, generator)
        flat[start:start + len(piece)].add_(piece.mul_(scale))


def perturb(params: dict[str, Tensor], seed: int, law: str, structure: str, chunk: int,
            scale: float | Tensor) -> None:
    """θ ← θ + scale·v over every parameter, in place (v: direction `seed`)."""
    for index, p in enumerate(params.values()):
        add_direction(p, index, seed, law, structure, chunk, scale)


@dataclass
class Seeded:
    """One tensor's estimate Σ_k c_k v_k (v_k: direction seeds[k]'s block `index`), held as
    K seeds and K coefficients; regenerated when an optimizer applies it (`add_to`, chunked)
    or needs it dense (`dense`)."""

    seeds: list[int]
    coefficients: Tensor  # K
    index: int
    law: str
    structure: str
    chunk: int
    shape: torch.Size

    def add_to(self, p: Tensor, alpha: float) -> None:
        """p += alpha·Σ_k c_k v_k, one direction and one chunk at a time."""
        for seed, c in zip(self.seeds, self.coefficients):
            add_direction(p, self.index, seed, self.law, self.structure, self.chunk, c * alpha)

    def dense(self) -> Tensor:
        out = torch.zeros(self.shape, device=self.coefficients.device, dtype=self.coefficients.dtype)
        self.add_to(out, 1.0)
        return out
