"""The statistics hook a plug-in uses for RegMean: the inputs its linear layers see.

A plug-in's ``linear_inputs(params, example_ids)`` (:class:`~evomerge.core.contracts.
ExampleStatistics`) runs its model once over the examples with forward hooks on the linear
layers whose weights the merge needs, and returns what they saw (padding left out).
"""

from __future__ import annotations

import torch


def linear_layer_inputs(model, names, keep: torch.Tensor, forward) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": (tokens, in)}``: the float32 inputs of every ``nn.Linear`` of
    ``model`` whose weight is in ``names``, at the positions ``keep`` marks, over one call of
    ``forward()`` (forward hooks, removed afterwards even if the call raises)."""
    found: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" in names:

            def hook(mod, inputs, output, key=f"{name}.weight"):
                found[key] = inputs[0][keep].float()

            hooks.append(module.register_forward_hook(hook))
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    return found
