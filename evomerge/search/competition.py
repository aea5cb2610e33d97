"""Resource competition over per-example scores (M2N2's natural niches), as pure functions.

Every example j is a resource of total size 1 shared among the members that score on it:
``z_j = (sum_k s_kj) ** alpha`` (zero sums count as 1), member fitness ``f_i = sum_j s_ij / z_j``.
With ``alpha = 0`` nothing is shared and fitness is the raw total score (the GA baseline).
Fitness is computed as ``S @ (1 / z)``: one matrix-vector product, no (P, E) temporaries.
"""

from __future__ import annotations

import torch


def inverse_z(column_sums: torch.Tensor, alpha: float) -> torch.Tensor:
    """``1 / z_j`` from the column sums of the score matrix."""
    if alpha == 0.0:
        return torch.ones_like(column_sums)
    z = torch.where(column_sums == 0, 1.0, column_sums)
    if alpha != 1.0:
        z = z.pow(alpha)
    return z.reciprocal_()


def fitness(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Competition fitness ``f_i = sum_j s_ij / z_j`` of every row (empty rows are zero)."""
    return scores @ inverse_z(scores.sum(dim=0), alpha)


def attraction(scores: torch.Tensor, zinv: torch.Tensor, a: int) -> torch.Tensor:
    """``g(A, B) = sum_j max(0, s_Bj - s_Aj) / z_j`` for every B: what B adds where A is weak."""
    return (scores - scores[a]).clamp_(min=0) @ zinv


def sample_index(weights: list[float], u: float) -> int:
    """Inverse-CDF draw of an index with probability proportional to ``weights`` (u in [0, 1)).

    Zero-weight entries are never chosen. The caller guarantees some weight is positive.
    """
    target = u * sum(weights)
    acc, last = 0.0, 0
    for i, w in enumerate(weights):
        if w > 0:
            acc += w
            last = i
            if acc > target:
                return i
    return last  # rounding left the target at the very end


def worst_index(
    scores: torch.Tensor, child: torch.Tensor, alpha: float, sums: torch.Tensor | None = None
) -> int:
    """Row to drop after adding ``child``: lowest fitness over all P+1 rows, first on ties.

    Returns ``len(scores)`` when the child itself is the worst (the archive stays unchanged).
    ``sums``: ``scores.sum(dim=0)`` when the caller already has it.
    """
    zinv = inverse_z((scores.sum(dim=0) if sums is None else sums) + child, alpha)
    f = (scores @ zinv).tolist()
    f.append(float(child @ zinv))
    return min(range(len(f)), key=f.__getitem__)


def surely_worst(scores: torch.Tensor, high: torch.Tensor, alpha: float) -> bool:
    """Whether a child is the least fit of the P+1 rows (:func:`worst_index` drops it) for
    *every* score vector ``s`` with ``0 <= s <= high``.

    For ``0 <= alpha <= 1`` the child's fitness ``sum_j s_j / (a_j + s_j) ** alpha`` grows
    with each ``s_j`` and every member's ``sum_j S_ij / (a_j + s_j) ** alpha`` shrinks, so
    ``s = high`` is the child's best case against every member at once: if it is strictly the
    least fit there, it is for every ``s``. Computed in float64 with a margin that covers the
    float32 rounding of :func:`worst_index` over ``E`` examples. ``alpha > 1`` has no such
    corner: never sure.
    """
    if alpha > 1.0:
        return False
    s = scores.double()
    u = high.double()
    zinv = inverse_z(s.sum(dim=0) + u, alpha)
    f_members = s @ zinv
    f_child = float(u @ zinv)
    margin = 2.0 * (u.numel() + 32) * 2.0**-24  # float32 rounding of E-term sums, twice over
    return f_child * (1.0 + margin) < float(f_members.min()) * (1.0 - margin)
