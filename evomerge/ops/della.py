"""DELLA's MagPrune: drop task-vector entries with a probability that falls with their magnitude.

Within each row (a 2-D tensor's rows; a 1-D tensor is one row) the entries are ranked by
``|tau|`` from the smallest (rank 0) to the largest (rank ``C - 1``); entry of rank ``r`` is kept
with probability ``p = density - epsilon + 2 * epsilon * r / (C - 1)``, so the row keeps
``density`` of its entries on average and the large ones more often. mergekit's formula and
checks: ``density >= 1`` keeps all, ``density <= 0`` drops all, otherwise
``density +/- epsilon`` must lie in (0, 1). The kept entries are rescaled to the task vector's
L1 norm when ``rescale`` (mergekit's ``rescale_norm: l1``), as for the other trims.

Deliberate differences: ranks among equal magnitudes go to the lower index first (mergekit's
double argsort leaves them unspecified); a row of one entry gets ``p = density`` (mergekit
divides 0 by 0 there and fails); the draws are the seeded 16-bit SFC64 stream DARE uses, and an
entry is kept when its draw is below ``round(p * 2**16)`` (mergekit: ``torch.bernoulli``).
"""

from __future__ import annotations

import numpy as np
import torch

from evomerge.ops.op_support import BLOCK, as_fraction
from evomerge.ops.task_vectors import _Draws16, _Keep


class _MaskKeep(_Keep):
    """A precomputed 0/1 mask (uint8, flat), applied block by block."""

    def __init__(self, mask: torch.Tensor, l1: bool):
        self.mask, self.l1 = mask, l1

    def start(self):
        def apply(sl, d):
            return d.mul_(self.mask[sl].to(d.dtype))

        return apply


def _rows(shape) -> tuple[int, int]:
    if len(shape) <= 1:
        return 1, int(np.prod(shape)) if shape else 1
    return int(shape[0]), int(np.prod(shape[1:]))


def density_epsilon_problem(intervals) -> str | None:
    """DELLA's joint rule over parameter intervals (:attr:`MergeMethod.joint`): a density
    strictly inside (0, 1) keeps entries with probabilities ``density +/- epsilon``, which must
    stay inside (0, 1); densities of 0 (drop all) and 1 (keep all) take any epsilon."""
    (d_lo, d_hi), (_, e_hi) = intervals["density"], intervals["epsilon"]
    if d_lo >= 1 or d_hi <= 0 or e_hi <= 0:
        return None
    if max(d_lo, 0.0) - e_hi > 0 and min(d_hi, 1.0) + e_hi < 1:
        return None
    density = f"{d_lo:g}" if d_lo == d_hi else f"[{d_lo:g}, {d_hi:g}]"
    return (
        f"density {density} with epsilon {e_hi:g}: della keeps entries with probability "
        f"density +/- epsilon, which must stay inside (0, 1); keep density within "
        f"({e_hi:g}, {1 - e_hi:g}) or lower epsilon"
    )


def della_magprune(b, theta, mp, rescale, generator, work, shape=None):
    """DELLA's rank-dependent random drop of ``theta - b`` (both flat), as a :class:`_Keep`."""
    density = as_fraction(mp, "density")
    epsilon = as_fraction(mp, "epsilon")
    if density >= 1:
        return None
    if density <= 0:
        return _MaskKeep(torch.zeros(b.numel(), dtype=torch.uint8), False)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"epsilon ({epsilon}) must leave density +/- epsilon inside (0, 1) "
            f"(density is {density})"
        )
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    draws = _Draws16(seed)
    shape = tuple(shape) if shape is not None else (b.numel(),)
    if len(shape) > 2:
        return _MaskKeep(_mask_nd(b, theta, shape, density, epsilon, draws, work), rescale)
    n_rows, length = _rows(shape)
    mask = torch.empty(b.numel(), dtype=torch.uint8)
    step = max(1, (4 * BLOCK) // max(length, 1))
    limits = _thresholds(density, epsilon, length)
    for r0 in range(0, n_rows, step):
        r1 = min(r0 + step, n_rows)
        flat = slice(r0 * length, r1 * length)
        mag = (theta[flat].to(work) - b[flat].to(work)).abs_().view(r1 - r0, length)
        mask[flat] = _keep_rows(mag, limits, draws).reshape(-1)
    return _MaskKeep(mask, rescale)


def _thresholds(density, epsilon, length) -> torch.Tensor:
    """``round(p(r) * 2**16)`` for ranks ``r = 0 .. length - 1`` (int32)."""
    if length == 1:
        p = torch.tensor([density], dtype=torch.float64)
    else:
        p = (density - epsilon) + torch.arange(length, dtype=torch.float64) * (
            2 * epsilon / (length - 1)
        )
    return torch.round(p * 2**16).to(torch.int32)


def _stable_order(mag: torch.Tensor) -> torch.Tensor:
    """``argsort(mag, dim=1, stable=True)`` of non-negative magnitudes, by a plain sort.

    A non-negative float orders like its bit pattern, so ``bits * C + position`` is a unique
    int64 key in the same order with ties going to the lower position; numpy's vectorised
    sort of those keys is about 7 times faster here than torch's stable sort, and the
    position is the key modulo ``C``. float64 (and accelerator) magnitudes use torch's.
    """
    length = mag.shape[1]
    if mag.dtype != torch.float32 or mag.device.type != "cpu":  # no room for float64 bits
        return torch.argsort(mag, dim=1, stable=True)
    key = mag.contiguous().view(torch.int32).to(torch.int64).mul_(length)
    key.add_(torch.arange(length, dtype=torch.int64))
    ordered = key.numpy()
    ordered.sort(axis=1)
    return torch.from_numpy(np.remainder(ordered, length, out=ordered))


def _keep_rows(mag, limits, draws) -> torch.Tensor:
    """0/1 (uint8) keep decisions of a (rows, C) block of magnitudes, one draw per entry.

    ``limits`` are :func:`_thresholds` by rank; scattering them through the stable order puts
    each entry's limit in its place (no rank tensor, no gather).
    """
    rows, length = mag.shape
    limit = torch.empty((rows, length), dtype=torch.int32)
    limit.scatter_(1, _stable_order(mag), limits.expand(rows, length).contiguous())
    u = torch.from_numpy(draws.take(rows * length).astype(np.int32)).view(rows, length)
    return (u < limit).to(torch.uint8)


def _mask_nd(b, theta, shape, density, epsilon, draws, work) -> torch.Tensor:
    """Tensors of more than two dimensions: ranks along dimension 1, as mergekit does."""
    mag = (theta.to(work) - b.to(work)).abs_().view(shape).movedim(1, -1).contiguous()
    length = mag.shape[-1]
    kept = _keep_rows(mag.view(-1, length), _thresholds(density, epsilon, length), draws)
    # draws were taken in the moved order; the mask goes back to the tensor's order
    return kept.view(mag.shape).movedim(-1, 1).contiguous().reshape(-1)
