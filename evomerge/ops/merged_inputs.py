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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from evomerge.ops.statistics import gram_matrices, split


def sequential_grams(
    plugin,
    flats: Sequence[torch.Tensor],
    ids: Sequence[torch.Tensor],
    merge: Callable[[str, list[torch.Tensor] | None], torch.Tensor],
    batch_size: int = 16,
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The merged tensors and, per model, its Grams through the merged earlier layers.

    ``flats``: each merged model's flat float32 parameters (``param_layout()`` order);
    ``ids``: each model's example ids; ``merge(name, grams)`` merges one tensor given each
    model's Gram for it (None for a tensor without one) and returns it.
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
            grams[i][name] = gram_matrices(plugin, flat, model_ids, batch_size)[name]
        merged[name] = current[name] = merge(name, [g[name] for g in grams])
    return merged, grams
