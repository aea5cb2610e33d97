"""Merges decided entry by entry: NearSwap, and passthrough (one model, optionally scaled)."""

from __future__ import annotations

import torch

from evomerge.ops.op_support import as_number, block_slices, work_dtype


def nearswap(base, models, model_params, params, generator):
    """mergekit's NearSwap: ``w * theta + (1 - w) * base`` with ``w = clamp(t / max(|base -
    theta|, 1e-6), 0, 1)``: entries that are already close to the base move all the way to the
    model, distant ones only by ``t``.
    """
    if base is None or len(models) != 1:
        raise ValueError("nearswap merges two tensors: a base and one model")
    t = as_number(params["t"], "t")
    work = work_dtype(base)
    a, b = base.reshape(-1), models[0].reshape(-1)
    out = torch.empty(a.shape, dtype=base.dtype, device=base.device)
    for sl in block_slices(a.numel(), a.device):
        x, y = a[sl].to(work), b[sl].to(work)
        d = y - x
        w = torch.reciprocal(d.abs().clamp_(min=1e-6)).mul_(t).clamp_(0, 1)
        out[sl] = d.mul_(w).add_(x)
    return out.view(base.shape)


def passthrough(base, models, model_params, params, generator):
    """The one input tensor, multiplied by its ``scale`` (1: unchanged, bit for bit)."""
    if len(models) != 1:
        raise ValueError(f"passthrough takes exactly one model per tensor, got {len(models)}")
    scale = as_number(model_params[0]["scale"], "scale")
    if scale == 1:
        return models[0].clone()
    work = work_dtype(models[0])
    return (models[0].to(work) * scale).to(models[0].dtype)
