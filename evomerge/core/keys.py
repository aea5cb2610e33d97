"""Explicit random keys: every random draw of a child is a pure function of (seed, child index).

Nothing random lives in the strategy's state, so a checkpoint needs no generator state and a
resumed run draws exactly what the uninterrupted run would have drawn. A key is mixed into a
64-bit seed for torch's CPU generator (splitmix64), which is cheap enough to reseed per child.
"""

from __future__ import annotations

import torch

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def key(seed: int, index: int) -> int:
    """A 63-bit generator seed for child ``index`` of a run with ``seed``."""
    return _splitmix64(_splitmix64(seed & _M64) ^ (index & _M64)) >> 1


def child_generator(seed: int, index: int, generator: torch.Generator | None = None):
    """A CPU torch generator positioned at the start of child ``index``'s random stream."""
    return (generator or torch.Generator()).manual_seed(key(seed, index))
