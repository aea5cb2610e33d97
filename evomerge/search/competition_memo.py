"""The competition quantities of one score matrix, computed once while it stays the same.

All the children of a batch draw their parents from one archive state, and in a batch-1
search most children leave the archive unchanged, so the next child sees the same state
again: the column sums, ``1/z``, the members' fitness and each member's attraction row are the
same every time. They are kept for the very score tensor they were computed from (the archive
never writes into a state's scores once the state exists: a ``tell`` writes into a fresh
copy), so a look-up returns exactly what computing afresh would.
"""

from __future__ import annotations

import torch

from evomerge.search import competition


class CompetitionMemo:
    """Derived quantities of the last score matrix seen (``scores`` compared by identity)."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.scores = None
        self.sums = self.zinv = self.weights = None
        self.attraction: dict[int, list[float]] = {}

    def of(self, scores: torch.Tensor) -> CompetitionMemo:
        """This memo, recomputed first if ``scores`` is not the matrix it holds."""
        if scores is not self.scores:
            self.scores = scores
            self.sums = scores.sum(dim=0)
            self.zinv = competition.inverse_z(self.sums, self.alpha)
            self.weights = (scores @ self.zinv).tolist()
            self.attraction = {}
        return self

    def attraction_to(self, a: int) -> list[float]:
        """``competition.attraction`` of every member to member row ``a``."""
        g = self.attraction.get(a)
        if g is None:
            g = self.attraction[a] = competition.attraction(self.scores, self.zinv, a).tolist()
        return g
