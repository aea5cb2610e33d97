"""MAP's surrogate: a quadratic model of each objective over the merge coefficients.

MAP (Li et al. 2024, *Low-compute Model Merging with Amortized Pareto Fronts via Quadratic
Approximation*, arXiv:2406.07529) replaces each task's score ``s_m(c)`` as a function of the
merge coefficients ``c`` (d numbers) by its second-order expansion

    s_m(c) ~ b_m + sum_i a_mi c_i + sum_{i <= j} q_mij c_i c_j

fitted by least squares to a few evaluated coefficient vectors: ``(d + 1)(d + 2) / 2`` terms, so
that many points at least. Fitted in float64 with ``torch.linalg.lstsq`` (the minimum-norm
solution where the points leave some terms undetermined).
"""

from __future__ import annotations

import torch


def num_terms(dim: int) -> int:
    """Terms of a full quadratic in ``dim`` variables: 1 + d + d(d + 1)/2."""
    return (dim + 1) * (dim + 2) // 2


def quadratic_features(x: torch.Tensor) -> torch.Tensor:
    """``(T, d)`` points -> ``(T, num_terms(d))``: ``[1, c_1..c_d, c_i c_j for i <= j]`` (the
    products in row-major order of the upper triangle)."""
    x = x.to(torch.float64)
    t, d = x.shape
    rows, cols = torch.triu_indices(d, d)
    return torch.cat([torch.ones(t, 1, dtype=torch.float64), x, x[:, rows] * x[:, cols]], dim=1)


def fit_quadratic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Coefficients ``(num_terms(d), M)`` of the least-squares quadratic of each of ``y``'s
    ``M`` columns over the ``(T, d)`` points ``x``; needs ``T >= num_terms(d)``."""
    need = num_terms(x.shape[1])
    if x.shape[0] < need:
        raise ValueError(
            f"a quadratic in {x.shape[1]} coefficients has {need} terms; {x.shape[0]} points "
            "cannot determine it"
        )
    a = quadratic_features(x)
    return torch.linalg.lstsq(a, y.to(torch.float64), driver="gelsd").solution


def predict(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The fitted quadratics at the ``(T, d)`` points: ``(T, M)``."""
    return quadratic_features(x) @ coef
