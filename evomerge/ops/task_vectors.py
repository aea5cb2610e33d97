"""mergekit's generalized task arithmetic: trim, weight, elect signs and mix task vectors.

One fused pass over blocks of :data:`~evomerge.ops.op_support.BLOCK` entries computes every
task vector, trims it (TIES magnitude, breadcrumbs band or DARE drops), weights, mixes and rounds,
so a block's temporaries stay in cache. The conventions are stated in
:mod:`evomerge.ops.operators`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from evomerge.ops.op_support import (
    RESCALE_EPS,
    WEIGHT_EPS,
    as_flag,
    as_fraction,
    as_number,
    block_slices,
    work_dtype,
)
from evomerge.ops.ranking import RankCut, rank_cuts

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
            if self.lo is None:
                return self.hi.keep(sl.start, d, out=d)
            return self.hi.keep(sl.start, d).sub_(self.lo.keep(sl.start, d))

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


class _Scratch:
    """Block-sized buffers made once per merge, like ``like`` (dtype, device, size).

    A fresh 512 KiB tensor for every temporary of every block is a fresh mapping whose pages
    fault in one by one; reused buffers stay mapped and in cache.
    """

    def __init__(self, like: torch.Tensor, size: int | None = None):
        self.dtype, self.device = like.dtype, like.device
        self.size = like.numel() if size is None else size
        self.one = torch.ones((), dtype=like.dtype, device=like.device)
        self.buffers: dict = {}

    def __call__(self, name, m: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None:
            buf = torch.empty(self.size, dtype=dtype or self.dtype, device=self.device)
            self.buffers[name] = buf
        return buf[:m]


def _consensus_block(deltas, weights, normalize, scratch=None):
    """TIES disjoint sum of one block: per entry, the values whose sign is that of the sum.

    The elected sign is ``copysign(1, sum)``: + for a sum of +0 (mergekit: ``sum >= 0``);
    a sum of -0 only arises when every value is -0 and nothing counts either way. A value
    agrees when ``value * sign > 0``: ``clamp(value * sign, min=0)`` is its magnitude or 0,
    and its ``sign()`` the 0/1 agreement, all in fast float kernels. The magnitudes are summed
    and the sum multiplied by the sign once (negation commutes with rounding, so this is the
    sum of the agreeing values), then ``+ 0.0`` turns a -0 into the +0 a sum starting from
    +0 gives. Zero entries (trimmed or unchanged) never count, neither in the sum nor in the
    per-entry divisor (the weights of the agreeing models); zero divisors become 1
    (``d + (d == 0)``: exact, as ``x + 0`` is ``x``). The deltas' buffers are overwritten.
    """
    scratch = scratch or _Scratch(deltas[0])
    m = deltas[0].numel()
    total = scratch("total", m)
    if len(deltas) == 1:
        total.copy_(deltas[0])
    else:
        torch.add(deltas[0], deltas[1], out=total)
        for d in deltas[2:]:
            total.add_(d)
    sign = torch.copysign(scratch.one, total, out=scratch("sign", m))
    agree = [d.mul_(sign).clamp_(min=0) for d in deltas]
    mixed = total  # the sum is spent: its buffer takes the mix
    if len(agree) == 1:
        mixed.copy_(agree[0])
    else:
        torch.add(agree[0], agree[1], out=mixed)
        for a in agree[2:]:
            mixed.add_(a)
    mixed.mul_(sign).add_(0.0)
    divisor = None
    if normalize:
        for a, w in zip(agree, weights, strict=True):
            if divisor is None:
                divisor = torch.mul(a.sign_(), w, out=scratch("divisor", m))
            else:
                divisor.add_(a.sign_(), alpha=w)
        divisor.add_(torch.eq(divisor, 0, out=scratch("zero", m, torch.bool)))
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
    slices = list(block_slices(b.numel(), b.device))
    scratch = _Scratch(torch.empty(0, dtype=work, device=b.device), slices[0].stop if slices else 0)
    for sl in slices:
        m = sl.stop - sl.start
        bb = b[sl] if b.dtype == work else scratch("base", m).copy_(b[sl])
        deltas = []
        for j, (theta, w, keep, apply, factor) in enumerate(
            zip(thetas, weights, keeps, appliers, factors, strict=True)
        ):
            # theta's half dtype promotes to bb's, exactly
            d = torch.sub(theta[sl], bb, out=scratch(j, m))
            if apply is not None:
                d = apply(sl, d)
                if keep.divide is not None:
                    d.div_(keep.divide)
            if factor is not None:
                d.mul_(factor)
            deltas.append(d.mul_(w))
        if consensus:
            mixed, block_divisor = _consensus_block(deltas, weights, normalize, scratch)
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
