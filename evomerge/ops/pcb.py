"""PCB-merging (Du et al. 2024): weigh each task vector's entries by how much they matter to
their own task (intra-balancing) and how far the other tasks agree (inter-balancing), drop the
lowest and average the rest by those weights.

The authors' released code (duguodong7/pcb-merging, ``PCB_merge``) is the reference; its
inter-balancing term differs from the paper's text (a softmax over pairwise products there,
``tanh`` of the product with the summed task vectors in the code), and users reproduce the
code's numbers. Per tensor, with the task vectors ``tau`` as rows (n models, d entries):

1. ``|tau|`` is clamped per row between its sorted values at ``int(d * 1e-4)`` and
   ``int(d * (1 - 1e-4) - 1)`` (outliers cut; for d < 10000 that lowers the largest entry to
   the second largest), and ``tau~ = sign(tau) * clamped``;
2. intra: ``exp(n * norm(clamped)^2)``, ``norm`` the per-row min-max scaling;
3. inter: ``tanh(tau * sum_k tau_k)`` (the unclamped task vectors);
4. score = intra * inter, clamped per row from below at its sorted value at
   ``int(d * (1 - pcb_ratio))`` and min-max scaled per row: the entries at or under that value
   get 0 (dropped), the largest 1;
5. ``base + lambda * sum_k w_k tau~_k scale_k / max(sum_k scale_k, 1e-12)``.

``w_k`` (``weight``, 1 by default) multiplies each task's share, as the per-task coefficients
of the code's evolutionary variant do; ``lambda`` is the paper's scaling. Deliberate
differences: the code flattens the whole model into one row per task, this merges tensor by
tensor (mergekit's convention), so the quantiles are each tensor's; a row whose min-max range
is 0 scales to 0 (the code divides 0 by 0); ``pcb_ratio`` must lie in (0, 1].
"""

from __future__ import annotations

import torch

from evomerge.ops.op_support import as_number, work_dtype

#: The released code's outlier clamp of ``|tau|``, from below and from above.
OUTLIER_RATIO = 0.0001


def _clamp_rows(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The code's ``clamp``: each row between its sorted values at the two ratios' indices."""
    d = x.shape[1]
    lo_index = int(d * low)
    hi_index = int(d * (1 - high) - 1)
    lo = torch.kthvalue(x, lo_index + 1, dim=1, keepdim=True).values
    hi = torch.kthvalue(x, hi_index + 1, dim=1, keepdim=True).values
    return torch.clamp(x, lo, hi)


def _minmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Per-row ``(x - min) / (max - min)``; a row with no range becomes 0."""
    lo = x.min(dim=1, keepdim=True).values
    span = x.max(dim=1, keepdim=True).values - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1), 0)


def pcb_scales(taus: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clamped task vectors and their balancing scales (both (n, d)) of the code."""
    n = taus.shape[0]
    magnitude = _clamp_rows(taus.abs(), OUTLIER_RATIO, OUTLIER_RATIO)
    clamped = torch.sign(taus) * magnitude
    intra = torch.exp(n * _minmax_rows(magnitude) ** 2)
    inter = torch.tanh(taus * taus.sum(dim=0))
    scale = _minmax_rows(_clamp_rows(intra * inter, 1 - ratio, 0))
    return clamped, scale


def pcb(base, models, model_params, params, generator):
    """PCB-merging of one tensor (see the module docstring)."""
    if not models:
        return base.clone()
    ratio = as_number(params["pcb_ratio"], "pcb_ratio")
    if not 0 < ratio <= 1:
        raise ValueError(f"pcb_ratio must lie in (0, 1], got {ratio}")
    lam = as_number(params["lambda"], "lambda")
    work = work_dtype(base)
    b = base.reshape(-1).to(work)
    if b.numel() == 0:
        return base.clone()
    taus = torch.stack([m.reshape(-1).to(work) - b for m in models])
    clamped, scale = pcb_scales(taus, ratio)
    w = torch.tensor([as_number(mp["weight"], "weight") for mp in model_params], dtype=work)
    merged = (clamped * scale * w.unsqueeze(1)).sum(dim=0)
    merged = merged / scale.sum(dim=0).clamp(min=1e-12)
    return (b + lam * merged).view(base.shape).to(base.dtype)
