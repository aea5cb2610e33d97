"""Variation operators in the dense space: a genome is an explicit flat parameter vector."""

from __future__ import annotations

import math

import torch

#: Below this sin(angle) the parents are treated as parallel and interpolated linearly.
SLERP_EPS = 1e-6


def slerp_coefficients(t: float, omega: float, sin_omega: float) -> tuple[float, float]:
    """Weights ``(ca, cb)`` so that ``ca * a + cb * b`` is SLERP from a (t=0) to b (t=1)."""
    if sin_omega <= SLERP_EPS:
        return 1.0 - t, t
    return math.sin((1.0 - t) * omega) / sin_omega, math.sin(t * omega) / sin_omega


def self_dot(a: torch.Tensor) -> float:
    """``a . a`` summed in float64 (one factor of the parents' angle)."""
    a64 = a.double()
    return torch.dot(a64, a64).item()


def cross_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a . b`` summed in float64 (the other factor)."""
    return torch.dot(a.double(), b.double()).item()


def angle_from_dots(aa: float, bb: float, ab: float) -> tuple[float, float]:
    """The angle between two vectors and its sine from ``a.a``, ``b.b`` and ``a.b``."""
    norms = math.sqrt(aa * bb)
    if norms == 0.0 or not math.isfinite(norms):
        return 0.0, 0.0  # undefined angle: fall back to linear interpolation
    omega = math.acos(min(1.0, max(-1.0, ab / norms)))
    return omega, math.sin(omega)


def parent_angle(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """The ONE angle between the whole parent vectors, and its sine (float64 sums)."""
    return angle_from_dots(self_dot(a), self_dot(b), cross_dot(a, b))


def split_slerp(
    a: torch.Tensor,
    b: torch.Tensor,
    split: int,
    w: float,
    angle: tuple[float, float] | None = None,
) -> torch.Tensor:
    """M2N2 crossover: SLERP at ``t = w`` before ``split`` and ``t = 1 - w`` from it on.

    Both halves use the same angle, that of the whole vectors (as the reference does); where
    ``sin(angle) <= 1e-6`` the interpolation is linear. ``split`` may be 0 or ``len(a)``.
    ``angle``: ``parent_angle(a, b)`` when the caller already knows it.
    """
    omega, sin_omega = angle if angle is not None else parent_angle(a, b)
    child = torch.empty_like(a)
    for part, t in ((slice(0, split), w), (slice(split, None), 1.0 - w)):
        ca, cb = slerp_coefficients(t, omega, sin_omega)
        torch.add(a[part] * ca, b[part], alpha=cb, out=child[part])
    return child


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Plain SLERP of two whole vectors (crossover without a split point)."""
    return split_slerp(a, b, len(a), t)


def mutate(params: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, std^2) noise to every parameter, in place."""
    noise = torch.randn(params.shape, generator=generator, dtype=params.dtype)
    return params.add_(noise, alpha=std)
