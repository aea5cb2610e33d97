"""Dot products of archive members, remembered while the members live unchanged.

Every crossover needs the angle between its two parents, three float64 dot products over the
whole genome. Parents are archive members, which stay the same tensors, untouched, for as
long as they are members, and a batch-1 search draws the same few hundred pairs again and
again; so each product is computed once and looked up after. An entry is found only for the
very tensor objects it was computed from (weak references: the memo keeps no member alive)
at the same in-place version, so a look-up returns exactly what computing afresh would.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

MAX_ENTRIES = 4096  # a 64-member archive's ordered pairs; past this the memo starts afresh


class DotMemo:
    """``value(a, b, compute)``: ``compute(a, b)`` once per live, unchanged pair of tensors."""

    def __init__(self):
        self._entries: dict[tuple[int, int], tuple] = {}

    def value(self, a: torch.Tensor, b: torch.Tensor, compute: Callable) -> float:
        key = (id(a), id(b))
        entry = self._entries.get(key)
        if entry is not None:
            ref_a, ref_b, versions, result = entry
            if ref_a() is a and ref_b() is b and versions == (a._version, b._version):
                return result
        result = compute(a, b)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (weakref.ref(a), weakref.ref(b), (a._version, b._version), result)
        return result
