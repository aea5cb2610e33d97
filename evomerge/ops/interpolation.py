"""Merges that interpolate whole tensors: linear (model soup), SLERP and M2N2's region crossover."""

from __future__ import annotations

import math

import torch

from evomerge.ops.op_support import (
    DOT_THRESHOLD,
    NORM_EPS,
    WEIGHT_EPS,
    as_flag,
    as_index,
    as_number,
    block_slices,
    work_dtype,
)
from evomerge.ops.vectors import slerp_coefficients

# --- linear, slerp, region crossover --------------------------------------------------------


def linear(base, models, model_params, params, generator):
    """``sum_k w_k theta_k``, divided by ``sum_k w_k`` when ``normalize``; base is ignored.

    A weight sum with ``|sum| < 1e-8`` is replaced by 1, as generalized task arithmetic does
    (mergekit's linear divides by it and returns inf/NaN).
    """
    if not models:
        raise ValueError("linear needs at least one model")
    weights = [as_number(mp["weight"], "weight") for mp in model_params]
    normalize = as_flag(params["normalize"], "normalize")
    work = work_dtype(models[0])
    divisor = torch.tensor(weights, dtype=work).sum().item()
    divisor = 1.0 if abs(divisor) < WEIGHT_EPS else divisor
    flats = [m.reshape(-1) for m in models]
    out = torch.empty(flats[0].shape, dtype=models[0].dtype, device=models[0].device)
    for sl in block_slices(out.numel(), out.device):
        mixed = None
        for theta, w in zip(flats, weights, strict=True):
            term = theta[sl].to(work) * w
            mixed = term if mixed is None else mixed.add_(term)
        if normalize:
            mixed.div_(divisor)
        out[sl] = mixed
    return out.view(models[0].shape)


def slerp(base, models, model_params, params, generator):
    """mergekit's SLERP from ``base`` (t = 0) to ``models[0]`` (t = 1), per tensor.

    The cosine is that of the flattened tensors, each divided by its norm only when the norm
    exceeds 1e-8 (so a zero tensor gives cosine 0, a quarter turn, as in mergekit). Where
    ``|cos| > 0.9995`` (parallel or anti-parallel) the result is ``(1 - t) v0 + t v1``.
    Norms and the cosine are accumulated in float64 and the coefficients are Python floats
    (mergekit: float32 numpy), so results agree with mergekit to float32 rounding.
    """
    if base is None or len(models) != 1:
        raise ValueError("slerp merges two tensors: a base (t = 0) and one model (t = 1)")
    t = as_number(params["t"], "t")
    work = work_dtype(base)
    v0, v1 = base.reshape(-1), models[0].reshape(-1)
    s00 = s11 = s01 = 0.0
    for sl in block_slices(v0.numel(), v0.device):
        a, c = v0[sl].double(), v1[sl].double()
        s00 += torch.dot(a, a).item()
        s11 += torch.dot(c, c).item()
        s01 += torch.dot(a, c).item()
    n0, n1 = math.sqrt(s00), math.sqrt(s11)
    d0 = n0 if n0 > NORM_EPS else 1.0
    d1 = n1 if n1 > NORM_EPS else 1.0
    dot = s01 / (d0 * d1)
    if abs(dot) > DOT_THRESHOLD:
        c0, c1 = 1 - t, t
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        c0 = math.sin(theta - theta * t) / sin_theta
        c1 = math.sin(theta * t) / sin_theta
    out = torch.empty(v0.shape, dtype=base.dtype, device=base.device)
    for sl in block_slices(v0.numel(), v0.device):
        out[sl] = (v0[sl].to(work) * c0).add_(v1[sl].to(work) * c1)
    return out.view(base.shape)


def region_crossover(base, models, model_params, params, generator):
    """M2N2's split-point SLERP restricted to one tensor of the whole model.

    The element at global flat position ``offset + i`` uses ``t = w`` before ``split`` and
    ``t = 1 - w`` from it on, with the coefficients of the ONE whole-model angle ``omega``
    (None: linear), computed exactly as :func:`evomerge.ops.vectors.split_slerp` does, so the
    concatenation over all tensors equals ``split_slerp`` on the concatenated vectors.
    """
    if len(models) != 2:
        raise ValueError(f"region_crossover merges two models, got {len(models)}")
    offset = as_index(params["offset"], "offset")
    split = as_index(params["split"], "split")
    w = as_number(params["w"], "w")
    omega = 0.0 if params["omega"] is None else as_number(params["omega"], "omega")
    sin_omega = 0.0 if params["omega"] is None else math.sin(omega)
    work = work_dtype(models[0])
    a, b = (m.to(work).reshape(-1) for m in models)
    local = min(max(split - offset, 0), a.numel())
    child = torch.empty_like(a)
    for part, t in ((slice(0, local), w), (slice(local, None), 1.0 - w)):
        ca, cb = slerp_coefficients(t, omega, sin_omega)
        torch.add(a[part] * ca, b[part], alpha=cb, out=child[part])
    return child.view(models[0].shape).to(models[0].dtype)
