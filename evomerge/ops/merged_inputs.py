"""RegMean++'s statistics: each layer's input Grams taken through the already merged layers.

RegMean (:mod:`evomerge.ops.data_aware`) fits layer ``l`` of the merge to the inputs
``X_i^l`` that model ``i``'s own earlier layers give its examples. RegMean++ (Nguyen et al.
2025, arXiv:2508.03121) takes them from the *merged* model instead: ``X_i^l = f*_{<l}(D_i)``,
model ``i``'s examples pushed through the merged layers ``1..l-1``, so each layer is fitted to
the inputs it will actually see. Those Grams depend on the merge itself, so they cannot be
computed once per model before merging: :func:`sequential_grams` merges layer by layer.

Order: the tensors without Grams (biases, norms, embeddings: RegMean averages them) are merged
first; then the Gram-bearing weights in ``param_layout()`` order, which must be the forward
order (true of the digits and causal-LM plug-ins), each after a pass over every model's
examples through the partially merged model. A weight not merged yet still holds the first
model's values; in forward order none of them feeds the layer being measured.

PLeaS's least-squares step (:mod:`evomerge.ops.least_squares`) needs one more statistic per
layer: the cross Gram ``C_i = X*_i^T X_i`` between the merged model's inputs ``X*_i`` and model
``i``'s own inputs ``X_i`` on the same examples (rows paired token by token); with
``cross=True`` each model's statistic is ``stack([G*_i, C_i])``, shape ``(2, in, in)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from evomerge.ops.statistics import chunks, gram_matrices, split


@torch.no_grad()
def cross_grams(plugin, merged, own, ids, name, batch_size=16) -> torch.Tensor:
    """``stack([X*^T X*, X*^T X])`` of layer ``name``'s inputs, ``X*`` under the flat
    parameters ``merged`` and ``X`` under ``own``, over examples ``ids`` (float64 sums)."""
    g = c = None
    for chunk in chunks(ids, batch_size):
        xs = plugin.linear_inputs(merged, chunk)[name]
        xo = plugin.linear_inputs(own, chunk)[name]
        xs = xs.reshape(-1, xs.shape[-1]).to(torch.float64)
        xo = xo.reshape(-1, xo.shape[-1]).to(torch.float64)
        if xs.shape != xo.shape:
            raise ValueError(
                f"linear_inputs: '{name}' gave {tuple(xs.shape)} rows under one model and "
                f"{tuple(xo.shape)} under another for the same examples"
            )
        g = xs.T @ xs if g is None else g + xs.T @ xs
        c = xs.T @ xo if c is None else c + xs.T @ xo
    return torch.stack([g, c]).to(torch.float32)


def sequential_grams(
    plugin,
    flats: Sequence[torch.Tensor],
    ids: Sequence[torch.Tensor],
    merge: Callable[[str, list[torch.Tensor] | None], torch.Tensor],
    batch_size: int = 16,
    cross: bool = False,
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The merged tensors and, per model, its Grams through the merged earlier layers.

    ``flats``: each merged model's flat float32 parameters (``param_layout()`` order);
    ``ids``: each model's example ids; ``merge(name, grams)`` merges one tensor given each
    model's Gram for it (None for a tensor without one) and returns it. ``cross``: each
    statistic is ``stack([G*, C])`` (:func:`cross_grams`) instead of ``G*``.
    """
    layout = plugin.param_layout()
    names = [n for n, _ in layout]
    probe = plugin.linear_inputs(flats[0].detach().float(), ids[0][:1])
    unknown = [n for n in probe if n not in names]
    if unknown:
        raise ValueError(f"linear_inputs: '{unknown[0]}' is not a tensor of param_layout()")
    current = {n: t.clone() for n, t in split(flats[0].detach().float(), layout).items()}
    merged: dict[str, torch.Tensor] = {}
    for name in names:
        if name not in probe:
            merged[name] = current[name] = merge(name, None)
    grams: list[dict[str, torch.Tensor]] = [{} for _ in flats]
    for name in names:
        if name not in probe:
            continue
        flat = torch.cat([current[n].reshape(-1).float() for n in names])
        for i, model_ids in enumerate(ids):
            if cross:
                own = flats[i].detach().float()
                grams[i][name] = cross_grams(plugin, flat, own, model_ids, name, batch_size)
            else:
                grams[i][name] = gram_matrices(plugin, flat, model_ids, batch_size)[name]
        merged[name] = current[name] = merge(name, [g[name] for g in grams])
    return merged, grams
