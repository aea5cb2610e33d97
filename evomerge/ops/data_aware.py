"""Data-aware merges: Fisher-weighted averaging and RegMean, per tensor, from statistics.

Both weigh each model by what its own data says about a tensor, so a parameter that matters to
one model's task is not averaged away by a model that never uses it. The statistics are
computed once by :mod:`evomerge.ops.statistics` (a pass over a fitness plug-in's examples)
and handed to these functions one tensor at a time, so merging stays streaming.

* ``fisher`` (Matena & Raffel 2022): ``theta* = sum_i w_i F_i theta_i / sum_i w_i F_i`` entry
  by entry, ``F_i`` model i's diagonal Fisher for this tensor, each entry floored at
  ``fisher_floor`` (the paper's implementation uses 1e-6) so that entries no example informs
  fall back to the weighted average ``sum w_i theta_i / sum w_i``.
* ``regmean`` (Jin et al. 2023): for a linear layer ``y = W x`` whose inputs on model i's
  examples have the Gram matrix ``G_i = X_i^T X_i``, ``W* = (sum_i w_i W_i G~_i)
  (sum_i w_i G~_i)^-1`` with ``G~_i = alpha G_i + (1 - alpha) diag(G_i)`` (the paper's
  reduction of the off-diagonals; ``alpha = 1`` is the exact minimiser of
  ``sum_i w_i ||X_i W^T - X_i W_i^T||^2``). Solved in float64 with ``torch.linalg.solve``, never
  an explicit inverse. Input dimensions no example activates (zero Gram diagonal over all
  models) are decoupled from the others, and take the weighted average of the models' columns.
  Tensors without a Gram (embeddings, norms, biases) get the weighted average.

A weight tensor is read as torch's ``(out, in)`` when its last axis matches the Gram (square
weights too) and as ``(in, out)`` when only its first axis does (the digits plug-in's flat
layout stores ``x @ W``).
"""

from __future__ import annotations

import torch

from evomerge.ops.op_support import WEIGHT_EPS, as_number, work_dtype


def _weights(model_params) -> list[float]:
    return [as_number(mp["weight"], "weight") for mp in model_params]


def weighted_average(models, weights) -> torch.Tensor:
    """``sum w_i theta_i / sum w_i`` in the work dtype (a zero weight sum divides by 1)."""
    total = sum(weights)
    total = 1.0 if abs(total) < WEIGHT_EPS else total
    work = work_dtype(models[0])
    out = sum(w * m.to(work) for w, m in zip(weights, models, strict=True)) / total
    return out.to(models[0].dtype)


def _check_statistics(name, models, statistics, shape_of):
    if statistics is None or len(statistics) != len(models):
        raise ValueError(f"{name} needs one statistics tensor per model (got none or too few)")
    if any(s is None for s in statistics):
        return False
    for i, (m, s) in enumerate(zip(models, statistics, strict=True)):
        if tuple(s.shape) != shape_of(m):
            raise ValueError(
                f"{name}: model {i}'s statistics have shape {tuple(s.shape)}, "
                f"expected {shape_of(m)}"
            )
    return True


def fisher(base, models, model_params, params, generator, statistics=None):
    """Fisher-weighted average; a tensor without Fisher estimates gets the weighted average."""
    if not models:
        raise ValueError("fisher needs at least one model")
    weights = _weights(model_params)
    floor = as_number(params["fisher_floor"], "fisher_floor")
    if floor <= 0:
        raise ValueError(f"fisher_floor must be > 0, got {floor}")
    if not _check_statistics("fisher", models, statistics, lambda m: tuple(m.shape)):
        return weighted_average(models, weights)
    work = work_dtype(models[0])
    num = torch.zeros(models[0].shape, dtype=work, device=models[0].device)
    den = torch.zeros_like(num)
    for w, m, f in zip(weights, models, statistics, strict=True):
        wf = f.to(device=num.device, dtype=work).clamp_min(floor).mul_(w)
        den += wf
        num.addcmul_(wf, m.to(work))
    return num.div_(den).to(models[0].dtype)


def input_axis(weight_shape, gram_shape) -> int:
    """The axis of a weight that meets its input: 1 for ``(out, in)``, 0 for ``(in, out)``."""
    n = gram_shape[0]
    if len(weight_shape) == 2 and weight_shape[1] == n:
        return 1
    if len(weight_shape) == 2 and weight_shape[0] == n:
        return 0
    raise ValueError(f"a Gram of shape {tuple(gram_shape)} does not fit a weight {weight_shape}")


#: RegMean refuses a system whose condition number exceeds this: its solution would be
#: dominated by rounding (weights many times too large), not by the data
MAX_CONDITION = 1e10


def conditioning_problem(a: torch.Tensor, alpha: float) -> str | None:
    """Why a RegMean system is too near-singular to solve (too few examples for the layer's
    inputs with ``alpha`` near 1), or None; the solution of such a system would be weights blown
    up by rounding.

    Judged on the system scaled to a unit diagonal (inputs of very different magnitudes are
    not a problem for the solve, only inputs the examples leave linearly dependent are):
    with ``alpha < 1`` its smallest eigenvalue is at least ``1 - alpha``."""
    scale = torch.diagonal(a).clamp_min(torch.finfo(a.dtype).tiny).rsqrt()
    eig = torch.linalg.eigvalsh(a * scale[:, None] * scale[None, :])
    top = float(eig[-1])
    low = float(eig[0])
    if top > 0 and low > top / MAX_CONDITION:
        return None
    cond = "inf" if low <= 0 else f"{top / low:.1e}"
    return (
        f"the Gram system of a {a.shape[0]}-input layer is near-singular (condition "
        f"number {cond}, over {MAX_CONDITION:.0e}): too few examples cover its inputs with "
        f"alpha {alpha:g}"
    )


def _check_conditioning(a: torch.Tensor, alpha: float) -> None:
    problem = conditioning_problem(a, alpha)
    if problem is not None:
        raise ValueError(
            f"regmean: {problem}; lower alpha (e.g. 0.9) or give more examples (statistics.limit)"
        )


def _reduced_sum(grams, alpha: float) -> torch.Tensor:
    """The sum of the Grams with their off-diagonals times ``alpha`` (unit weights), and the
    inputs no example reaches decoupled, as :func:`regmean` solves it."""
    a = None
    for g in grams:
        g = g.to(torch.float64)
        diag = torch.diagonal(g).clone()
        g = g * alpha
        g.diagonal().copy_(diag)
        a = g if a is None else a + g
    dead = torch.diagonal(a) == 0
    a[dead, dead] = 1.0
    return a


def regmean_statistics_problem(statistics, intervals) -> str | None:
    """Before a search: why one tensor's Grams make RegMean's system near-singular at the
    highest ``alpha`` the recipe can reach (weights equal), or None. A Gram sum singular at
    that alpha stays singular for every positive weighting, so a search would fail on it."""
    if not statistics or any(g is None or g.dim() != 2 for g in statistics):
        return None
    alpha = intervals["alpha"][1]
    problem = conditioning_problem(_reduced_sum(statistics, alpha), alpha)
    if problem is None:
        return None
    return f"{problem}; lower alpha (at most 0.9, say) or give more examples (statistics.limit)"


def regmean(base, models, model_params, params, generator, statistics=None):
    """RegMean for a linear weight with Grams; the weighted average for every other tensor."""
    if not models:
        raise ValueError("regmean needs at least one model")
    weights = _weights(model_params)
    alpha = as_number(params["alpha"], "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if statistics is None or any(s is None for s in statistics) or models[0].dim() != 2:
        return weighted_average(models, weights)
    n = statistics[0].shape[0]
    _check_statistics("regmean", models, statistics, lambda m: (n, n))
    axis = input_axis(tuple(models[0].shape), (n, n))
    dev = models[0].device
    a = torch.zeros(n, n, dtype=torch.float64, device=dev)
    b = None
    for w, m, g in zip(weights, models, statistics, strict=True):
        g = g.to(device=dev, dtype=torch.float64)
        diag = torch.diagonal(g).clone()
        g = g * alpha
        g.diagonal().copy_(diag)
        g *= w
        m64 = m.to(torch.float64)
        term = m64 @ g if axis == 1 else g @ m64  # (out, in) G  or  G (in, out)
        a += g
        b = term if b is None else b + term
    dead = torch.diagonal(a) == 0
    if dead.any():  # rows/columns of a PSD sum with a zero diagonal are zero: decoupled
        avg = weighted_average([m.to(torch.float64) for m in models], weights)
        a[dead, dead] = 1.0
        if axis == 1:
            b[:, dead] = avg[:, dead]
        else:
            b[dead, :] = avg[dead, :]
    _check_conditioning(a, alpha)
    # W* A = B  <=>  A W*^T = B^T (A symmetric), for (out, in); A W* = B for (in, out)
    out = torch.linalg.solve(a, b.T).T if axis == 1 else torch.linalg.solve(a, b)
    return out.to(models[0].dtype)
