"""Exact magnitude ranks of a task vector, found block by block without sorting it.

TIES and breadcrumbs keep the entries of ``tau = theta - base`` ranked in a band by ``|tau|``
(rank 0 the largest). Sorting a 30M-entry tensor, as mergekit does, costs seconds; here the
k-th largest magnitude is found by *selection*: a fixed-seed sample of the entries brackets
it, one streaming pass counts the entries above the bracket and collects those inside it (a
small fraction), and a selection over that small set gives the exact value. A sample that
misses (vanishingly rare) falls back to a selection over all entries, so the answer is exact
either way; the sample only decides the speed.

Equal magnitudes are ranked by flat index, the lower first, so a rank cut is a value ``v``
and a flat index ``c``: the entries above ``v``, and those equal to ``v`` at an index up to
``c``. :meth:`RankCut.keep` applies it to any block with one ``hardshrink`` (two at the one
block where ``c`` falls), a fast vectorised kernel, with no boolean masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.nn.functional import hardshrink

#: Below this many entries the magnitudes are simply materialised and selected in one go.
SMALL = 1 << 18
#: Sample size used to bracket a rank.
SAMPLE = 1 << 16

#: ``blocks()`` yields ``(start, |tau| block)`` in flat order; it may be called again.
Blocks = Callable[[], Iterator[tuple[int, torch.Tensor]]]


class RankCut:
    """The top ``k`` of ``n`` entries by magnitude, ties taken by lower flat index.

    ``value`` is the k-th largest magnitude; entries equal to it are kept up to flat index
    ``cutoff`` (inclusive). Tied zeros are never listed: they are zero whether kept or not.
    """

    def __init__(self, k: int, n: int, value: float = 0.0, cutoff: int = -1):
        self.k, self.n, self.value, self.cutoff = k, n, value, cutoff

    def keep(self, start: int, d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The entries of block ``d`` (flat, at ``start``) in the top k; the others zeroed.

        ``out`` (``d`` itself allowed) takes the result instead of a new tensor.
        """
        if self.k <= 0:
            return torch.zeros_like(d) if out is None else out.zero_()
        if self.k >= self.n:
            return d.clone() if out is None else out.copy_(d)
        # |x| >= v is |x| > (the next float below v): hardshrink keeps |x| > lambda.
        dtype = np.float64 if d.dtype == torch.float64 else np.float32
        v = float(dtype(self.value))
        below = float(np.nextafter(dtype(v), dtype(0)))
        split = self.cutoff + 1 - start  # entries before this offset also keep ties
        if split <= 0:
            return hardshrink(d, v) if out is None else torch.hardshrink(d, v, out=out)
        if split >= d.numel():
            return hardshrink(d, below) if out is None else torch.hardshrink(d, below, out=out)
        if out is None:
            return torch.cat([hardshrink(d[:split], below), hardshrink(d[split:], v)])
        torch.hardshrink(d[:split], below, out=out[:split])
        torch.hardshrink(d[split:], v, out=out[split:])
        return out


def rank_cuts(
    blocks: Blocks, n: int, ks: Sequence[int], sample: Callable[[torch.Tensor], torch.Tensor]
) -> dict[int, RankCut]:
    """A :class:`RankCut` for each ``k`` in ``ks`` over the magnitudes that ``blocks`` yields.

    ``sample(idx)`` returns the magnitudes at flat indices ``idx``.
    """
    cuts = {k: RankCut(k, n) for k in ks}
    inner = sorted(k for k in set(ks) if 0 < k < n)
    if not inner:
        return cuts
    found = _bracketed(blocks, n, inner, sample) if n > SMALL else {}
    missing = [k for k in inner if k not in found]
    if missing:
        parts = [(start, _np(a)) for start, a in blocks()]
        whole = np.concatenate([a for _, a in parts])
        for k in missing:
            value = _select(whole.copy(), k)
            found[k] = _cut(k, value, [(0, _Scattered(None, whole))], 0)
    for k, (value, cutoff) in found.items():
        cuts[k] = RankCut(k, n, value, cutoff)
    return cuts


def _np(a: torch.Tensor) -> np.ndarray:
    return a.reshape(-1).cpu().numpy()


def _select(values: np.ndarray, rank: int) -> float:
    """The ``rank``-th largest of ``values`` (1-based), by introselect on a copy we own."""
    pos = values.size - rank
    values.partition(pos)
    return float(values[pos])


def _bracketed(blocks: Blocks, n: int, ks: Sequence[int], sample) -> dict[int, tuple]:
    """``k -> (value, cutoff)`` for the ks a sampled bracket catches."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(n, (SAMPLE,), generator=gen)
    ranked = -np.sort(-_np(sample(idx)).astype(np.float64))
    brackets = {}
    for k in ks:
        p = k * SAMPLE / n
        margin = 4.0 * math.sqrt(p * (1.0 - p / SAMPLE)) + 16.0
        lo, hi = math.floor(p - margin), math.ceil(p + margin)
        upper = math.inf if lo < 0 else float(ranked[lo])
        lower = -1.0 if hi >= SAMPLE else float(ranked[hi])
        brackets[k] = (lower, upper)
    above = dict.fromkeys(ks, 0)
    inside: dict[int, list] = {k: [] for k in ks}
    for start, block in blocks():
        a = _np(block)
        for k, (lower, upper) in brackets.items():
            if upper != math.inf:
                above[k] += int(np.count_nonzero(a > upper))
            band = np.flatnonzero((a >= lower) & (a <= upper))
            inside[k].append((start, band, a[band]))
    found = {}
    for k in ks:
        values = [v for _, _, v in inside[k]]
        size = sum(v.size for v in values)
        if above[k] < k <= above[k] + size:
            value = _select(np.concatenate(values), k - above[k])
            # the band holds every entry in [lower, upper], value included: ties are in it
            parts = [(start, _Scattered(idx, v)) for start, idx, v in inside[k]]
            found[k] = _cut(k, value, parts, above[k])
    return found


class _Scattered:
    """Entries of one block: their offsets in it (None: all, in order) and magnitudes."""

    def __init__(self, offsets: np.ndarray | None, values: np.ndarray):
        self.offsets, self.values = offsets, values


def _cut(k: int, value: float, parts, above: int) -> tuple[float, int]:
    """``(value, cutoff)``: ``cutoff`` is the flat index of the last tie in the top ``k``.

    ``parts`` are ``(start, _Scattered)`` holding every entry ``>= value`` (and maybe others);
    ``above`` counts the entries greater than ``value`` outside ``parts``.
    """
    greater = above + sum(int(np.count_nonzero(p.values > value)) for _, p in parts)
    short = k - greater
    if short <= 0 or value <= 0:
        return value, -1
    for start, p in parts:
        equal = p.values == value
        ties = np.flatnonzero(equal) if p.offsets is None else p.offsets[equal]
        if short <= ties.size:
            return value, start + int(ties[short - 1])
        short -= ties.size
    raise AssertionError("rank cut: fewer ties than counted")  # unreachable
