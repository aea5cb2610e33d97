"""PLeaS's least-squares step: merged weights that reproduce each model's own layer outputs.

PLeaS (Nasery et al. 2024, *PLeaS — Merging Models with Permutations and Least Squares*,
arXiv:2407.02447) first permutes the models onto one another (here: ``align:``, weight
matching) and then, layer by layer in forward order, fits the merged layer to what each input
model's layer computes:

    W* = argmin_W  sum_i w_i || X*_i W^T - X_i W_i^T ||^2

with ``X_i`` the inputs model ``i``'s own layer sees on its examples and ``X*_i`` the inputs the
*merged* model's earlier (already fitted) layers give those same examples. The normal equations
give, for torch's ``(out, in)`` weights,

    W* = (sum_i w_i W_i C_i^T) (sum_i w_i G*_i)^-1,   G*_i = X*_i^T X*_i,  C_i = X*_i^T X_i

(for ``(in, out)`` storage, ``W* = A^-1 sum_i w_i C_i W_i``). With ``X*_i = X_i`` this is
RegMean. The statistics come from :func:`evomerge.ops.merged_inputs.sequential_grams` with
``cross=True``. Tensors without inputs (biases, norms, embeddings) get the weighted average.

Differences from the paper (said in docs/merge-operator.md): the merged model keeps the
inputs' width (PLeaS's *partial* merging, which keeps some units of each model unmerged in a
wider layer, changes the architecture and is not done); the least squares are solved in closed
form, in float64 (the authors' released code fits them by gradient steps); ``ridge`` adds
``ridge * mean(diag(A))`` to ``A``'s diagonal so that inputs no example excites stay solvable.
"""

from __future__ import annotations

import torch

from evomerge.ops.data_aware import input_axis, weighted_average
from evomerge.ops.op_support import as_number


def pleas(base, models, model_params, params, generator, statistics=None):
    """The least-squares merge of one weight from ``stack([G*_i, C_i])`` per model; the
    weighted average for a tensor without statistics."""
    if not models:
        raise ValueError("pleas needs at least one model")
    weights = [as_number(mp["weight"], "weight") for mp in model_params]
    ridge = as_number(params["ridge"], "ridge")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if statistics is None or any(s is None for s in statistics) or models[0].dim() != 2:
        return weighted_average(models, weights)
    n = statistics[0].shape[-1]
    for i, s in enumerate(statistics):
        if tuple(s.shape) != (2, n, n):
            raise ValueError(
                f"pleas: model {i}'s statistics have shape {tuple(s.shape)}, expected (2, {n}, "
                f"{n}) (merged-input Gram and cross Gram)"
            )
    axis = input_axis(tuple(models[0].shape), (n, n))
    dev = models[0].device
    a = torch.zeros(n, n, dtype=torch.float64, device=dev)
    b = None
    for w, m, s in zip(weights, models, statistics, strict=True):
        s = s.to(device=dev, dtype=torch.float64)
        g, c = s[0], s[1]
        m64 = m.to(torch.float64)
        term = w * (m64 @ c.T if axis == 1 else c @ m64)
        a += w * g
        b = term if b is None else b + term
    scale = float(torch.diagonal(a).mean())
    if scale <= 0:  # no example reaches this layer at all
        return weighted_average(models, weights)
    a.diagonal().add_(ridge * scale)
    dead = torch.diagonal(a) == 0
    if dead.any():
        a[dead, dead] = 1.0
    # W A = B for (out, in): A W^T = B^T (A symmetric); A W = B for (in, out)
    out = torch.linalg.solve(a, b.T).T if axis == 1 else torch.linalg.solve(a, b)
    return out.to(models[0].dtype)
