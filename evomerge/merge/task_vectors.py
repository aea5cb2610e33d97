"""mergekit's generalized task arithmetic: trim, weight, elect signs and mix task vectors.

One fused pass over blocks of :data:`~evomerge.merge.op_support.BLOCK` entries computes every
task vector, trims it (TIES magnitude, breadcrumbs band or DARE drops), weights, mixes and rounds,
so a block's temporaries stay in cache. The conventions are stated in
:mod:`evomerge.merge.operators`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .op_support import (
    RESCALE_EPS,
    WEIGHT_EPS,
    as_flag,
    as_fraction,
    as_number,
    block_slices,
    work_dtype,
)
from .ranking import RankCut, rank_cuts

# --- sparsifiers: (base, theta, model params, rescale, generator, dtype, shape) -> _Keep | None


class _Keep:
    """Which entries of one task vector survive; ``start()`` gives a fresh block-order masker.

    ``divide`` (DARE's rescale) divides the kept entries; ``l1`` asks for the L1-norm rescale.
    """

    divide: float | None = None
    l1: bool = False

    def start(self) -> Callable[[slice, torch.Tensor], torch.Tensor]:
        raise NotImplementedError


class _RankKeep(_Keep):
    """Entries ranked ``lo .. hi-1`` by magnitude (``lo`` None: from the largest).

    The band is ``top(hi) - top(lo)``: the top ``lo`` are inside the top ``hi``, and
    ``x - x`` and ``x - 0`` are exact, so the subtraction only drops entries.
    """

    def __init__(self, hi: RankCut, lo: RankCut | None, l1: bool):
        self.hi, self.lo, self.l1 = hi, lo, l1

    def start(self):
        def apply(sl, d):
            kept = self.hi.keep(sl.start, d)
            return kept if self.lo is None else kept.sub_(self.lo.keep(sl.start, d))

        return apply


class _Draws16:
    """A stream of 16-bit uniform draws: each 64-bit SFC64 output gives four, low first.

    ``take(m)`` returns the next ``m`` draws whatever the sizes asked before, so a merge
    draws the same bits for any block size.
    """

    def __init__(self, seed: int):
        self.source = np.random.SFC64(seed)
        self.rest = np.empty(0, dtype=np.uint16)

    def take(self, m: int) -> np.ndarray:
        need = m - self.rest.size
        if need > 0:
            fresh = self.source.random_raw((need + 3) // 4).astype("<u8", copy=False)
            pool = np.concatenate([self.rest, fresh.view("<u2")])
        else:
            pool = self.rest
        out, self.rest = pool[:m], pool[m:]
        return out


class _DrawKeep(_Keep):
    """DARE: an entry survives when its 16-bit draw is below ``round(density * 2**16)``.

    Each model has its own :class:`_Draws16` stream, read block by block as the fused pass
    advances (the draws stay in cache; 16 bits an entry cost a quarter of a 64-bit output).
    ``draws`` None drops every entry (density <= 0 or below 2**-17).
    """

    def __init__(self, draws: _Draws16 | None, threshold: int, divide: float | None):
        self.draws, self.threshold, self.divide = draws, threshold, divide

    def start(self):
        def apply(sl, d):
            if self.draws is None:
                return d.zero_()
            kept = self.draws.take(sl.stop - sl.start) < np.uint16(self.threshold)
            return d.mul_(torch.from_numpy(kept.view(np.uint8)).to(d.device, d.dtype))

        return apply


def _magnitudes(b, theta, work):
    """Block generator and sampler of ``|theta - b|`` (both flat) in ``work`` precision."""

    def blocks():
        for sl in block_slices(b.numel(), b.device):
            yield sl.start, torch.sub(theta[sl], b[sl].to(work)).abs_()

    def sample(idx):
        # sorted, the gathers walk memory in order; the sample is a multiset either way
        idx = idx.sort().values.to(b.device)
        return torch.sub(theta[idx], b[idx].to(work)).abs_()

    return blocks, sample


def magnitude_trim(b, theta, mp, rescale, generator, work, shape=None):
    """TIES trim: keep the top ``k = max(1, int(density * n))`` entries by magnitude."""
    density = as_fraction(mp, "density")
    if density >= 1:
        return None
    n = b.numel()
    k = max(1, int(density * n)) if density > 0 else 0
    blocks, sample = _magnitudes(b, theta, work)
    cuts = rank_cuts(blocks, n, [k], sample)
    return _RankKeep(cuts[k], None, rescale)


def breadcrumbs_trim(b, theta, mp, rescale, generator, work, shape=None):
    """Drop the top ``int(gamma * n)`` outliers and the smallest, keeping ``int(density * n)``."""
    density, gamma = as_fraction(mp, "density"), as_fraction(mp, "gamma")
    if density >= 1:
        return None
    n = b.numel()
    keep = int(density * n)
    top = int(gamma * n)
    if n - keep - top < 0:  # fewer small entries than needed: drop fewer outliers
        top = n - keep
    blocks, sample = _magnitudes(b, theta, work)
    cuts = rank_cuts(blocks, n, [top + keep, top], sample)
    return _RankKeep(cuts[top + keep], cuts[top] if top > 0 else None, rescale)


def dare_drop(b, theta, mp, rescale, generator, work, shape=None):
    """DARE: keep each entry with probability ``density`` (one uniform draw per entry)."""
    density = as_fraction(mp, "density")
    if density >= 1:
        return None
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    threshold = round(density * 2**16)
    if threshold >= 2**16:
        return None
    if threshold <= 0:
        return _DrawKeep(None, 0, None)
    return _DrawKeep(_Draws16(seed), threshold, density if rescale else None)


# --- generalized task arithmetic ------------------------------------------------------------


def _l1_factor(b, theta, keep: _Keep, work) -> float | None:
    """mergekit's rescale: ``|tau|_1 / |trimmed tau|_1``, None when either is below 1e-7."""
    before = after = 0.0
    apply = keep.start()
    for sl in block_slices(b.numel(), b.device):
        d = theta[sl].to(work) - b[sl].to(work)
        before += float(d.abs().sum(dtype=torch.float64))
        after += float(apply(sl, d).abs_().sum(dtype=torch.float64))
    return before / after if before >= RESCALE_EPS and after >= RESCALE_EPS else None


def _replace_zeros(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its zeros set to 1, in place: ``t + (1 - |sign t|)`` (exact, no masks)."""
    return t.add_(t.abs().sign_().neg_().add_(1.0))


def _consensus_block(deltas, weights, normalize):
    """TIES disjoint sum of one block: per entry, the values whose sign is that of the sum.

    The elected sign is ``copysign(1, sum)``: + for a sum of +0 (mergekit: ``sum >= 0``);
    a sum of -0 only arises when every value is -0 and nothing counts either way. A value
    agrees when ``value * sign > 0``: ``clamp(value * sign, min=0) * sign`` is the value or 0
    and its ``sign()`` the 0/1 agreement, all in fast float kernels. Zero entries (trimmed or
    unchanged) never count, neither in the sum nor in the per-entry divisor (the weights of
    the agreeing models); zero divisors become 1.
    """
    total = deltas[0].clone() if len(deltas) == 1 else torch.add(deltas[0], deltas[1])
    for d in deltas[2:]:
        total.add_(d)
    sign = torch.copysign(torch.ones((), dtype=total.dtype, device=total.device), total)
    mixed = total.zero_()
    divisor = torch.zeros_like(mixed) if normalize else None
    for d, w in zip(deltas, weights, strict=True):
        agreeing = d.mul_(sign).clamp_(min=0)
        mixed.addcmul_(agreeing, sign)
        if divisor is not None:
            divisor.add_(agreeing.sign_(), alpha=w)
    if divisor is not None:
        _replace_zeros(divisor)
    return mixed, divisor


def generalized_task_arithmetic(
    base, models, model_params, params, generator, *, sparsify, consensus
):
    """``base + lambda * mix_k(w_k * sparsify(theta_k - base))`` (mergekit's GTA).

    Thresholds (and DARE's draws) are settled first, model by model; then one fused pass over
    blocks of ``BLOCK`` entries computes every task vector, trims, weights, mixes and rounds,
    so the temporaries of a block stay in cache and nothing of full size but the output and
    DARE's draws is ever allocated.
    """
    if not models:
        return base.clone()
    rescale = as_flag(params["rescale"], "rescale")
    normalize = as_flag(params["normalize"], "normalize")
    lam = as_number(params["lambda"], "lambda")
    work = work_dtype(base)
    b = base.reshape(-1)
    thetas = [m.reshape(-1) for m in models]
    weights, keeps = [], []
    for theta, mp in zip(thetas, model_params, strict=True):
        weights.append(as_number(mp["weight"], "weight"))
        keeps.append(
            None
            if sparsify is None
            else sparsify(b, theta, mp, rescale, generator, work, shape=base.shape)
        )
    factors = [
        _l1_factor(b, t, k, work) if k is not None and k.l1 else None
        for t, k in zip(thetas, keeps, strict=True)
    ]
    divisor = torch.tensor(weights, dtype=work).sum().item()
    divisor = 1.0 if abs(divisor) < WEIGHT_EPS else divisor
    appliers = [k.start() if k is not None else None for k in keeps]
    out = torch.empty(b.shape, dtype=base.dtype, device=base.device)
    for sl in block_slices(b.numel(), b.device):
        bb = b[sl].to(work)
        deltas = []
        for theta, w, keep, apply, factor in zip(
            thetas, weights, keeps, appliers, factors, strict=True
        ):
            d = torch.sub(theta[sl], bb)  # theta's half dtype promotes to bb's, exactly
            if apply is not None:
                d = apply(sl, d)
                if keep.divide is not None:
                    d.div_(keep.divide)
            if factor is not None:
                d.mul_(factor)
            deltas.append(d.mul_(w))
        if consensus:
            mixed, block_divisor = _consensus_block(deltas, weights, normalize)
        else:
            mixed, block_divisor = deltas[0], divisor
            for d in deltas[1:]:
                mixed.add_(d)
        if normalize:
            mixed.div_(block_divisor)
        if lam != 1:
            mixed.mul_(lam)
        out[sl] = mixed.add_(bb)
    return out.view(base.shape)
