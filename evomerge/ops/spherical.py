"""Merges whose coefficients come from the angles between whole tensors (or rows).

NuSLERP, Multi-SLERP, the Karcher mean and Model Stock all return ``[base +] sum_k c_k v_k``
with ``v_k = theta_k [- base]``, where the coefficients ``c_k`` depend only on the Gram matrix
``G_ab = <v_a, v_b>``. So each is two streaming passes: one accumulates ``G`` (in float64,
block by block), the coefficients are computed from ``G`` exactly as mergekit computes them
from the tensors, and one pass writes the combination. Nothing of full size is allocated
but the output. Row-wise variants (``nuslerp_flatten: false``, ``filter_wise: true``) treat
each row as its own vector and work on chunks of rows.

mergekit computes these in the input dtype (its unit vectors and Karcher iterates are rounded
to bfloat16 for bfloat16 models); here the angles are exact to float64 and the combination is
computed in float32 and rounded once, so results agree with mergekit to the inputs' rounding.
"""

from __future__ import annotations

import math

import torch

from evomerge.ops.op_support import BLOCK, as_flag, as_index, as_number, block_slices, work_dtype

# --- the two passes ---------------------------------------------------------------------------


def _vectors(base, models, subtract: bool):
    b = base.reshape(-1) if base is not None else None
    flats = [m.reshape(-1) for m in models]
    return b, flats, (subtract and b is not None)


def _flat_gram(b, flats, relative: bool, work) -> torch.Tensor:
    """``G_ab`` of the (relative) vectors, accumulated over blocks in float64; shape (1, K, K)."""
    k = len(flats)
    gram = torch.zeros(k, k, dtype=torch.float64)
    for sl in block_slices(flats[0].numel(), flats[0].device):
        rows = torch.stack([f[sl].to(work) for f in flats])
        if relative:
            rows -= b[sl].to(work)
        rows = rows.double()
        gram += (rows @ rows.T).cpu()
    return gram.unsqueeze(0)


def _flat_combine(base, b, flats, relative: bool, coeffs: torch.Tensor, work) -> torch.Tensor:
    """``[base +] sum_k c_k v_k`` over blocks, rounded once to the inputs' dtype."""
    c = [float(x) for x in coeffs.reshape(-1)]
    ref = flats[0]
    out = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
    for sl in block_slices(ref.numel(), ref.device):
        bb = b[sl].to(work) if relative else None
        acc = None
        for f, ck in zip(flats, c, strict=True):
            v = f[sl].to(work) - bb if bb is not None else f[sl].to(work, copy=True)
            acc = v.mul_(ck) if acc is None else acc.add_(v, alpha=ck)
        out[sl] = acc.add_(bb) if bb is not None else acc
    return out


def _rows_view(t: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` as a (rows, length) matrix whose rows are the vectors along ``axis``."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(1, -1)
    if axis != -1:
        t = t.transpose(axis, -1).contiguous()
    return t.reshape(-1, t.shape[-1])


def _unrows(out: torch.Tensor, shape, axis: int) -> torch.Tensor:
    if len(shape) < 2 or axis == -1:
        return out.reshape(shape)
    moved = list(shape)
    moved[axis], moved[-1] = moved[-1], moved[axis]
    return out.reshape(moved).transpose(axis, -1).contiguous()


def _rowwise(base, models, subtract: bool, coeff_fn, axis: int) -> torch.Tensor:
    """Per-row Gram, coefficients and combination, chunk of rows by chunk of rows."""
    work = work_dtype(models[0])
    relative = subtract and base is not None
    mats = [_rows_view(m, axis) for m in models]
    bm = _rows_view(base, axis) if relative else None
    n_rows, length = mats[0].shape
    out = torch.empty(mats[0].shape, dtype=models[0].dtype, device=models[0].device)
    step = max(1, BLOCK // max(length, 1))
    for r0 in range(0, n_rows, step):
        rs = slice(r0, min(r0 + step, n_rows))
        v = torch.stack([m[rs].to(work) for m in mats])  # (K, r, C)
        if relative:
            v -= bm[rs].to(work)
        vd = v.double().permute(1, 0, 2)  # (r, K, C)
        coeffs = coeff_fn(vd @ vd.transpose(1, 2))  # (r, K)
        acc = (v * coeffs.T.to(work).unsqueeze(-1)).sum(dim=0)
        out[rs] = acc.add_(bm[rs].to(work)) if relative else acc
    return _unrows(out, models[0].shape, axis)


def _gram_merge(base, models, subtract: bool, coeff_fn, rows_axis: int | None) -> torch.Tensor:
    if rows_axis is not None:
        return _rowwise(base, models, subtract, coeff_fn, rows_axis)
    work = work_dtype(models[0])
    b, flats, relative = _vectors(base, models, subtract)
    coeffs = coeff_fn(_flat_gram(b, flats, relative, work))
    return _flat_combine(base, b, flats, relative, coeffs, work).view(models[0].shape)


# --- NuSLERP ----------------------------------------------------------------------------------


def _nuslerp_coeffs(t: float):
    def coeffs(g):
        # mergekit: v / clamp(|v|, 1e-7), cos clamped to [-1, 1], colinear if 1 - cos^2 <= 1e-16
        n0 = g[:, 0, 0].sqrt().clamp(min=1e-7)
        n1 = g[:, 1, 1].sqrt().clamp(min=1e-7)
        cos = (g[:, 0, 1] / (n0 * n1)).clamp(-1, 1)
        colinear = (1 - cos.square()) <= 1e-16
        theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
        sin = torch.where(colinear, torch.ones_like(theta), torch.sin(theta))
        c0 = torch.where(colinear, torch.full_like(cos, 1 - t), torch.sin((1 - t) * theta) / sin)
        c1 = torch.where(colinear, torch.full_like(cos, t), torch.sin(t * theta) / sin)
        return torch.stack([c0, c1], dim=1)

    return coeffs


def nuslerp(base, models, model_params, params, generator):
    """mergekit's NuSLERP: SLERP of two models at ``t = w_1 / (w_0 + w_1)`` (0.5 if the sum is
    below 1e-6), of their task vectors when a base is given (the base is added back).

    ``nuslerp_flatten`` (default) takes the whole tensor as one vector; otherwise each row is
    interpolated on its own: the vectors along the last dimension, or along the first with
    ``nuslerp_row_wise``.
    """
    if len(models) != 2:
        raise ValueError(f"nuslerp merges exactly two models, got {len(models)}")
    w0, w1 = (as_number(mp["weight"], "weight") for mp in model_params)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    flatten = as_flag(params["nuslerp_flatten"], "nuslerp_flatten")
    row_wise = as_flag(params["nuslerp_row_wise"], "nuslerp_row_wise")
    axis = None if flatten else (0 if row_wise else -1)
    return _gram_merge(base, models, True, _nuslerp_coeffs(t), axis)


# --- Multi-SLERP ------------------------------------------------------------------------------


def multislerp(base, models, model_params, params, generator):
    """mergekit's Multi-SLERP: the weighted mean of the unit (task) vectors, projected to the
    tangent space at its direction, mapped back with the exponential map and scaled by the
    weighted mean of the norms; the base, if any, is subtracted first and added back.

    Unit vectors are ``v / (|v| + eps)``; weights are divided by their sum when
    ``normalize_weights``. A weighted mean of norm below ``eps`` falls back to the linear
    combination for two models and is an error for more, as in mergekit.
    """
    if not models:
        raise ValueError("multislerp needs at least one model")
    if len(models) == 1:
        return models[0].clone()  # mergekit returns the model itself (without the base)
    eps = as_number(params["eps"], "eps")
    weights = [as_number(mp["weight"], "weight") for mp in model_params]
    w = torch.tensor(weights, dtype=torch.float64)
    if as_flag(params["normalize_weights"], "normalize_weights"):
        w = w / w.sum()

    def coeffs(g):
        g = g[0]
        n = g.diagonal().clamp(min=0).sqrt()
        d = n + eps
        gu = g / (d[:, None] * d[None, :])  # Gram of the unit vectors
        mean_norm = math.sqrt(max(float(w @ gu @ w), 0.0))
        if mean_norm < eps:
            if len(w) == 2:
                return w.unsqueeze(0)
            raise ValueError(
                "multislerp: the weighted sum of the input tensors is zero (antipodal inputs "
                "whose weights balance out); use different weights"
            )
        m = w / mean_norm  # the mean direction, in the unit-vector basis
        dots = gu @ m
        tangent = w - float(w @ dots) * m
        tau = math.sqrt(max(float(tangent @ gu @ tangent), 0.0)) + eps
        unit = m * math.cos(tau) + tangent * (math.sin(tau) / tau)
        return (unit * float(n @ w) / d).unsqueeze(0)

    return _gram_merge(base, models, True, coeffs, None)


# --- Karcher mean -----------------------------------------------------------------------------


def karcher(base, models, model_params, params, generator):
    """mergekit's Karcher mean: the Riemannian mean of the models' directions on the unit
    sphere (equal weights, at most ``max_iter`` gradient steps, stopping below ``tol``), scaled
    by the mean of their norms. Models whose norm is at most ``tol`` do not count in the
    direction (they still count in the norm); if none counts, the result is zero.
    """
    if not models:
        raise ValueError("karcher needs at least one model")
    if len(models) == 1:
        return models[0].clone()
    max_iter = as_index(params["max_iter"], "max_iter")
    tol = as_number(params["tol"], "tol")

    def coeffs(g):
        g = g[0]
        k = g.shape[0]
        n = g.diagonal().clamp(min=0).sqrt()
        valid = [i for i in range(k) if float(n[i]) > tol]
        if not valid:
            return torch.zeros(1, k, dtype=torch.float64)
        d = torch.where(n == 0, torch.ones_like(n), n)
        gu = (g / (d[:, None] * d[None, :]))[valid][:, valid]
        alpha = torch.full((len(valid),), 1.0 / len(valid), dtype=torch.float64)

        def norm(c):
            return math.sqrt(max(float(c @ gu @ c), 0.0))

        mean = alpha.clone()
        mn = norm(mean)
        if mn < tol:
            mean = torch.zeros_like(alpha)
            mean[0] = 1.0
        else:
            mean = mean / mn
        for _ in range(max_iter):
            dots = (gu @ mean).clamp(-1.0, 1.0)
            tangent = torch.zeros_like(mean)
            for j in range(len(valid)):
                theta = math.acos(float(dots[j]))
                if theta < tol:
                    continue
                unit_j = torch.zeros_like(mean)
                unit_j[j] = 1.0
                tangent += alpha[j] * (theta / math.sin(theta)) * (unit_j - dots[j] * mean)
            tn = norm(tangent)
            if tn < tol:
                break
            mean = math.cos(tn) * mean + math.sin(tn) * (tangent / tn)
            un = norm(mean)
            if un > tol:
                mean = mean / un
        scale = float(n.sum()) / k
        out = torch.zeros(1, k, dtype=torch.float64)
        out[0, valid] = mean * scale / n[valid]
        return out

    return _gram_merge(None, models, False, coeffs, None)


# --- Model Stock ------------------------------------------------------------------------------


def _model_stock_coeffs(k: int):
    def coeffs(g):
        n = g.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt()  # (r, K)
        cos = []
        for a in range(k):
            for b in range(a + 1, k):
                cos.append((g[:, a, b] / (n[:, a] * n[:, b]).clamp(min=1e-6)).clamp(-1, 1))
        c = torch.stack(cos).mean(dim=0)
        den = 1 + (k - 1) * c
        singular = den.abs() < 1e-6
        t = torch.where(singular, torch.zeros_like(c), k * c / torch.where(singular, 1.0, den))
        return (t / k).unsqueeze(1).expand(-1, k)

    return coeffs


def model_stock(base, models, model_params, params, generator):
    """Model Stock (mergekit): ``t * mean_k(theta_k) + (1 - t) * base`` with
    ``t = K cos / (1 + (K - 1) cos)``, ``cos`` the mean pairwise cosine of the task vectors
    (each product of norms clamped to at least 1e-6, each cosine to [-1, 1]); ``t = 0`` where
    ``|1 + (K - 1) cos| < 1e-6``. ``filter_wise`` takes one ``t`` per row.
    """
    if len(models) < 2:
        raise ValueError(f"model_stock needs a base and at least two models, got {len(models)}")
    filter_wise = as_flag(params["filter_wise"], "filter_wise")
    coeff = _model_stock_coeffs(len(models))
    return _gram_merge(base, models, True, coeff, -1 if filter_wise else None)
