"""Lineage space: an individual is the exact recipe that made it from the seeds.

A genome cuts the flat parameter vector into contiguous regions and gives each region one
mixing coefficient per seed: ``x[i] = sum_k coeffs[r, k] * seed_k[i]`` for
``bounds[r] <= i < bounds[r + 1]``. M2N2's split-point crossover, SLERP with one whole-model
angle and task arithmetic are linear in the parents once the angle is known, so they map to
arithmetic on the small coefficient table: an archive of LLM-sized individuals costs kilobytes,
its checkpoint does not grow with the model, and any worker that holds the seeds can
materialise any member.

The one non-linear ingredient, SLERP's angle between two whole parents, comes from the seeds'
inner products over each region (:class:`SeedGram`), so the lineage child equals the child
computed densely from the materialised parents, to float32 rounding.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from evomerge.ops.vectors import SLERP_EPS, slerp_coefficients
from evomerge.tensors.parallel import for_each_tensor
from evomerge.tensors.seed_store import as_float64

#: ``read(start, stop)`` returns the seeds' entries ``start:stop`` as a ``(K, stop - start)``
#: array (any float dtype); it is how a lineage reaches the seeds without holding them.
SeedReader = Callable[[int, int], np.ndarray | torch.Tensor]
#: Entries mixed per vectorised step of :meth:`Lineage.materialize` (bounds the temporaries).
MATERIALIZE_BLOCK = 1 << 18


@dataclass(frozen=True, eq=False)
class Lineage:
    """Regions ``bounds[r]:bounds[r + 1]`` of the flat vector, each a mix ``coeffs[r]`` of seeds."""

    bounds: np.ndarray
    coeffs: np.ndarray

    def __post_init__(self):
        bounds = np.array(self.bounds, dtype=np.int64)
        coeffs = np.array(self.coeffs, dtype=np.float64)
        if bounds.ndim != 1 or bounds.size < 2 or bounds[0] != 0:
            raise ValueError("lineage bounds must start at 0 and hold at least one region")
        if np.any(np.diff(bounds) <= 0):
            raise ValueError("lineage bounds must be strictly increasing")
        if coeffs.ndim != 2 or coeffs.shape[0] != bounds.size - 1 or coeffs.shape[1] < 1:
            raise ValueError(
                f"lineage coeffs must be (regions, seeds) = ({bounds.size - 1}, K), "
                f"got {coeffs.shape}"
            )
        if not np.all(np.isfinite(coeffs)):
            raise ValueError("lineage coeffs must be finite")
        bounds.flags.writeable = False
        coeffs.flags.writeable = False
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "coeffs", coeffs)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def of_seed(cls, k: int, num_seeds: int, num_params: int) -> Lineage:
        """Seed ``k`` itself."""
        coeffs = np.zeros((1, num_seeds))
        coeffs[0, k] = 1.0
        return cls(np.array([0, num_params]), coeffs)

    @classmethod
    def mix(cls, weights, num_params: int) -> Lineage:
        """One mix of the seeds over the whole vector (a model soup, a task-arithmetic merge)."""
        return cls(np.array([0, num_params]), np.asarray(weights, dtype=np.float64)[None, :])

    @property
    def num_params(self) -> int:
        return int(self.bounds[-1])

    @property
    def num_seeds(self) -> int:
        return int(self.coeffs.shape[1])

    @property
    def num_regions(self) -> int:
        return int(self.coeffs.shape[0])

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Lineage)
            and np.array_equal(self.bounds, other.bounds)
            and np.array_equal(self.coeffs, other.coeffs)
        )

    __hash__ = None

    def canonical(self) -> Lineage:
        """The same individual with adjacent regions of equal coefficients merged."""
        if self.num_regions == 1:
            return self
        same = np.all(self.coeffs[1:] == self.coeffs[:-1], axis=1)
        if not same.any():
            return self
        keep = np.concatenate([[True], ~same])
        return Lineage(np.append(self.bounds[:-1][keep], self.bounds[-1]), self.coeffs[keep])

    def rows_at(self, starts: np.ndarray) -> np.ndarray:
        """The coefficient rows of the regions holding the flat positions ``starts``."""
        return self.coeffs[np.searchsorted(self.bounds, starts, side="right") - 1]

    # --- materialisation ----------------------------------------------------------------

    def materialize(self, read: SeedReader, start: int = 0, stop: int | None = None):
        """Entries ``start:stop`` of the individual as float32, mixed in float64.

        ``read`` gives the seeds' entries (:data:`SeedReader`); a ``(K, N)`` tensor of seeds
        can be passed as ``dense_reader(seeds)``. Works through blocks of ``MATERIALIZE_BLOCK``
        entries, each mixed in one vectorised step however many regions it crosses.
        """
        stop = self.num_params if stop is None else stop
        if not 0 <= start <= stop <= self.num_params:
            raise ValueError(f"range {start}:{stop} outside 0:{self.num_params}")
        out = np.empty(stop - start, dtype=np.float32)
        for s in range(start, stop, MATERIALIZE_BLOCK):
            e = min(s + MATERIALIZE_BLOCK, stop)
            first = int(np.searchsorted(self.bounds, s, side="right")) - 1
            last = int(np.searchsorted(self.bounds, e, side="left"))
            edges = np.clip(self.bounds[first : last + 1], s, e)
            rows = np.repeat(self.coeffs[first:last], np.diff(edges), axis=0)  # (e - s, K)
            block = as_float64(read(s, e))  # (K, e - s)
            out[s - start : e - start] = np.einsum("nk,kn->n", rows, block)
        return torch.from_numpy(out)

    # --- storage (safetensors tensors; no pickle) ----------------------------------------

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}bounds": torch.from_numpy(self.bounds.copy()),
            f"{prefix}coeffs": torch.from_numpy(self.coeffs.copy()),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> Lineage:
        return cls(tensors[f"{prefix}bounds"].numpy(), tensors[f"{prefix}coeffs"].numpy())


def dense_reader(seeds: torch.Tensor | np.ndarray) -> SeedReader:
    """A :data:`SeedReader` over seeds held in memory as a ``(K, N)`` array."""
    arr = seeds.detach().cpu().numpy() if isinstance(seeds, torch.Tensor) else np.asarray(seeds)

    def read(start: int, stop: int) -> np.ndarray:
        return arr[:, start:stop]

    return read


def combine(a: Lineage, b: Lineage, split: int, before, after) -> Lineage:
    """``ca * a + cb * b`` with ``(ca, cb) = before`` left of ``split`` and ``after`` from it."""
    if a.num_params != b.num_params or a.num_seeds != b.num_seeds:
        raise ValueError("lineages of different models cannot be combined")
    n = a.num_params
    split = min(max(int(split), 0), n)
    points = np.union1d(np.union1d(a.bounds, b.bounds), [split])
    starts = points[:-1]
    left = (starts < split)[:, None]
    ca = np.where(left, before[0], after[0])
    cb = np.where(left, before[1], after[1])
    coeffs = ca * a.rows_at(starts) + cb * b.rows_at(starts)
    return Lineage(points, coeffs).canonical()


class SeedGram:
    """Inner products of the seeds over any range of the flat vector, in float64.

    One pass over the seeds sums the ``K x K`` Gram matrix of every chunk of ``chunk``
    entries into prefix sums; a range's Gram is the difference of two prefixes, and a prefix
    that ends inside a chunk adds that chunk's partial Gram, read from the seeds on demand
    and cached. ``inner(a, b)`` is then exact to float64 sums, without materialising a or b.
    """

    def __init__(self, read: SeedReader, num_params: int, num_seeds: int, chunk: int = 1 << 16):
        self.read, self.num_params, self.num_seeds, self.chunk = read, num_params, num_seeds, chunk
        count = -(-num_params // chunk)
        self._prefix = np.zeros((count + 1, num_seeds, num_seeds))
        for c in range(count):
            x = torch.from_numpy(self._block(c * chunk, min((c + 1) * chunk, num_params)))
            self._prefix[c + 1] = self._prefix[c] + (x @ x.T).numpy()  # torch's mm: 3x numpy's
        self._partial: dict[int, np.ndarray] = {}

    def _block(self, start: int, stop: int) -> np.ndarray:
        return as_float64(self.read(start, stop))

    def prefix(self, x: int) -> np.ndarray:
        """Gram of the entries ``0:x``."""
        c, rest = divmod(int(x), self.chunk)
        if rest == 0:
            return self._prefix[c]
        part = self._partial.get(x)
        if part is None:
            block = self._block(c * self.chunk, x)
            part = self._partial[x] = block @ block.T
        return self._prefix[c] + part

    def inner(self, a: Lineage, b: Lineage) -> float:
        """``<a, b>`` over the whole vector."""
        return self.inner_products(a, b)[2]

    def inner_products(self, a: Lineage, b: Lineage) -> tuple[float, float, float]:
        """``(<a, a>, <b, b>, <a, b>)``, sharing the regions' Gram matrices."""
        points = np.union1d(a.bounds, b.bounds)
        prefixes = np.stack([self.prefix(x) for x in points])
        grams = prefixes[1:] - prefixes[:-1]
        starts = points[:-1]
        ra, rb = a.rows_at(starts), b.rows_at(starts)
        ga, gb = np.einsum("sij,sj->si", grams, ra), np.einsum("sij,sj->si", grams, rb)
        return (
            float(np.einsum("si,si->", ra, ga)),
            float(np.einsum("si,si->", rb, gb)),
            float(np.einsum("si,si->", ra, gb)),
        )

    def angle(self, a: Lineage, b: Lineage) -> tuple[float, float]:
        """The one angle between the whole parents and its sine, as ``parent_angle`` gives."""
        aa, bb, ab = self.inner_products(a, b)
        norms = math.sqrt(max(aa, 0.0) * max(bb, 0.0))
        if norms == 0.0 or not math.isfinite(norms):
            return 0.0, 0.0
        omega = math.acos(min(1.0, max(-1.0, ab / norms)))
        return omega, math.sin(omega)


def split_slerp(a: Lineage, b: Lineage, split: int, w: float, gram: SeedGram) -> Lineage:
    """M2N2 crossover in lineage space: ``evomerge.ops.vectors.split_slerp`` on recipes.

    SLERP at ``t = w`` before ``split`` and ``t = 1 - w`` from it on, both halves with the
    one angle between the whole parents; linear where ``sin(angle) <= 1e-6``.
    """
    omega, sin_omega = gram.angle(a, b)
    before = slerp_coefficients(w, omega, sin_omega)
    after = slerp_coefficients(1.0 - w, omega, sin_omega)
    return combine(a, b, split, before, after)


def slerp(a: Lineage, b: Lineage, t: float, gram: SeedGram) -> Lineage:
    """Plain SLERP of two whole individuals (crossover without a split point)."""
    return split_slerp(a, b, a.num_params, t, gram)


__all__ = [
    "SLERP_EPS",
    "Lineage",
    "SeedGram",
    "SeedReader",
    "combine",
    "dense_reader",
    "slerp",
    "split_slerp",
]


@torch.no_grad()
def load_into(genome, store, tensors, block: int = 1 << 18, start: int | None = None) -> None:
    """Write lineage ``genome``'s parameters into ``tensors`` in place, one block at a time.

    The one way a worker realises a lineage: ``tensors`` are a resident model's parameters in
    the flat vector's order (any dtype and device), one flat float32 row the plug-in scores,
    or (with ``start``) the tensors of entries ``start:`` that an export writes one at a time.
    Each block of a tensor is mixed on the tensor's device straight from views of the seeds
    (no copy of the seeds' block) and copied in, so a worker never holds a second copy of the
    model. The accumulator is float64 for float32/float64 targets (the mix then equals
    :meth:`Lineage.materialize`'s to the last bit, up to the order of the K additions) and
    float32 for half-precision ones; blocks of 2**18 entries keep it in cache, which on CPU
    is what makes the mix run near copy speed; on the CPU several tensors are mixed at once,
    each on one torch thread (:mod:`evomerge.tensors.parallel`).
    """
    bounds, coeffs = genome.bounds, genome.coeffs
    total = sum(t.numel() for t in tensors)
    fits = total == genome.num_params if start is None else start + total <= genome.num_params
    start = start or 0
    if genome.num_params != store.num_params or not fits:
        raise ValueError(
            f"lineage of {genome.num_params} parameters, seeds of {store.num_params}, "
            f"model of {total}"
        )
    starts = start + np.concatenate([[0], np.cumsum([t.numel() for t in tensors])])
    starts = starts.astype(np.int64)
    buffers = threading.local()

    def one(i: int) -> None:
        t = tensors[i]
        flat, offset = t.view(-1), int(starts[i])
        n = flat.numel()
        wide = torch.float64 if t.dtype in (torch.float32, torch.float64) else torch.float32
        acc_buf = getattr(buffers, "acc", None)
        if acc_buf is None or acc_buf.device != t.device or acc_buf.dtype != wide:
            acc_buf = buffers.acc = torch.empty(block, dtype=wide, device=t.device)
        with torch.no_grad():
            for s in range(0, n, block):
                e = min(s + block, n)
                lo, hi = offset + s, offset + e
                acc = acc_buf[: e - s]
                acc.zero_()
                r = int(np.searchsorted(bounds, lo, side="right")) - 1
                while r < len(coeffs) and bounds[r] < hi:
                    a, b = max(int(bounds[r]), lo), min(int(bounds[r + 1]), hi)
                    for k, c in enumerate(coeffs[r]):
                        if c != 0.0:
                            src = store.piece(k, a, b).to(t.device, non_blocking=True)
                            acc[a - lo : b - lo].add_(src, alpha=float(c))
                    r += 1
                flat[s:e].copy_(acc)

    cpu = all(t.device.type == "cpu" for t in tensors)
    for_each_tensor(one, [t.numel() for t in tensors], cpu=cpu)
