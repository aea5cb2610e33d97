"""Arcee Fusion (mergekit's ``arcee_fusion``): take a model's change only where it matters most.

mergekit 0.1.5's formula, for a base ``b`` and one model ``m``:
``importance = |m - b| * KL(softmax(m) || softmax(b))``, the KL taken along the last axis
(per row of a matrix, over the whole vector of a 1-D tensor) with ``1e-8`` added to both
distributions; the threshold is ``median + 1.5 * (q3 - q1)`` of the importances, each
quantile the sorted importance at index ``floor(q * (n - 1))``; the result is ``b + (m - b)``
where ``importance >= threshold`` and ``b`` elsewhere.

Deliberate differences: the quantiles are exact over all entries (``kthvalue``; mergekit
samples a million entries with replacement from torch's unseeded generator above that size,
so its masks on large tensors vary from run to run), and half-precision inputs are computed in
float32 and rounded once (mergekit computes in the input dtype).
"""

from __future__ import annotations

import torch

from evomerge.ops.op_support import work_dtype

#: The KL's smoothing, added to both softmaxes (mergekit's ``eps``).
KL_EPS = 1e-8


def importance(base: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """``|model - base|`` times the KL of their softmaxes along the last axis (work dtype)."""
    p = torch.softmax(model, dim=-1).add_(KL_EPS)
    q = torch.softmax(base, dim=-1).add_(KL_EPS)
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (model - base).abs_().mul_(kl)


def _quantile_at(sorted_index: int, flat: torch.Tensor) -> torch.Tensor:
    return torch.kthvalue(flat, sorted_index + 1).values


def fusion_threshold(scores: torch.Tensor) -> torch.Tensor:
    """``median + 1.5 * (q3 - q1)``, each quantile the sorted value at ``floor(q * (n-1))``."""
    flat = scores.reshape(-1)
    last = torch.tensor(flat.numel() - 1, dtype=torch.float32)
    q1, median, q3 = (
        _quantile_at(int((torch.tensor(q) * last).item()), flat) for q in (0.25, 0.5, 0.75)
    )
    return median + 1.5 * (q3 - q1)


def arcee_fusion(base, models, model_params, params, generator):
    """mergekit's ``arcee_fusion`` on one tensor (see the module docstring)."""
    if base is None or len(models) != 1:
        raise ValueError("arcee_fusion merges two tensors: a base and one model")
    work = work_dtype(base)
    b, m = base.to(work), models[0].to(work)
    if b.numel() == 0:
        return base.clone()
    scores = importance(b, m)
    keep = scores >= fusion_threshold(scores)
    return torch.where(keep, m, b).to(base.dtype)
