"""Merges whose coefficients are learnt from data first (AdaMerging, FW-Merging), then applied.

AdaMerging (:mod:`evomerge.ops.adamerging`) and FW-Merging (:mod:`evomerge.ops.frank_wolfe`)
each run a gradient procedure over the whole model, through a fitness plug-in's examples, and
end with coefficients per *group* of tensors (one group for task-wise, one per tensor for
layer-wise, or a recipe's layer groups) over the base and the models:

    merged_t = a_base[g(t)] * base_t + sum_k a_k[g(t)] * theta_k,t

Once learnt, merging is per tensor and streaming again: model ``k``'s statistic for tensor
``t`` is the pair ``(a_k, a_base / K)`` (its own coefficient and its share of the base's), and
:func:`learned_combination` sums ``a_k theta_k + (a_base / K) base`` over the models.

This module holds what both procedures share: the flat vectors cut into groups
(:class:`Pool`), the merged vector for a coefficient table (differentiable in it), and the
kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from evomerge.ops.op_support import work_dtype


class Pool:
    """The base and K models as flat vectors in a plug-in's ``param_layout()``, and each
    layout tensor's group (``group_of``: a key per tensor; equal keys share coefficients)."""

    def __init__(self, base: torch.Tensor, models: Sequence[torch.Tensor], layout, group_of):
        if len(group_of) != len(layout):
            raise ValueError(f"{len(group_of)} group keys for {len(layout)} layout tensors")
        self.layout = [(n, tuple(s)) for n, s in layout]
        self.sizes = [math.prod(s) for _, s in self.layout]
        if sum(self.sizes) != base.numel():
            raise ValueError(
                f"the layout covers {sum(self.sizes)} parameters, the vectors have {base.numel()}"
            )
        for i, m in enumerate(models):
            if m.shape != base.shape:
                raise ValueError(f"model {i} has {m.numel()} parameters, the base {base.numel()}")
        self.groups = list(dict.fromkeys(group_of))
        self.group = [self.groups.index(g) for g in group_of]
        self.base = torch.split(base.detach().float(), self.sizes)
        self.models = [torch.split(m.detach().float(), self.sizes) for m in models]

    @property
    def k(self) -> int:
        return len(self.models)

    def merged(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``coeffs`` (groups, 1 + K) over [base, models] -> the flat merged vector."""
        parts = []
        for t, g in enumerate(self.group):
            row = coeffs[g]
            x = row[0] * self.base[t]
            for k, m in enumerate(self.models):
                x = x + row[k + 1] * m[t]
            parts.append(x)
        return torch.cat(parts)

    def per_model(self, coeffs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Each model's statistics for the kernel: ``{tensor name: (a_k, a_base / K)}``."""
        coeffs = coeffs.detach().double().cpu()
        out: list[dict[str, torch.Tensor]] = [{} for _ in self.models]
        for (name, _), g in zip(self.layout, self.group, strict=True):
            for k in range(self.k):
                pair = torch.stack([coeffs[g, k + 1], coeffs[g, 0] / self.k])
                out[k][name] = pair.float()
        return out

    def table(self, coeffs: torch.Tensor) -> dict[str, list[float]]:
        """``{group: [a_base, a_1, ..., a_K]}`` (for reports)."""
        rows = coeffs.detach().double().cpu().tolist()
        return {str(g): [round(v, 6) for v in r] for g, r in zip(self.groups, rows, strict=True)}


def learned_combination(base, models, model_params, params, generator, statistics=None):
    """``sum_k a_k theta_k + (a_base / K) base`` with each model's learnt ``(a_k, a_base / K)``
    (see the module's docstring); computed in the work dtype, returned in the models' dtype."""
    if not models:
        raise ValueError("a learnt merge needs at least one model")
    if statistics is None or len(statistics) != len(models) or any(s is None for s in statistics):
        raise ValueError(
            "no learnt coefficients for this tensor: the statistics plug-in's param_layout() "
            "must name every tensor of the models being merged"
        )
    work = work_dtype(models[0])
    out = torch.zeros(models[0].shape, dtype=work, device=models[0].device)
    for m, s in zip(models, statistics, strict=True):
        if tuple(s.shape) != (2,):
            raise ValueError(f"learnt coefficients have shape {tuple(s.shape)}, expected (2,)")
        a, b = float(s[0]), float(s[1])
        out.add_(m.to(work), alpha=a)
        if base is not None and b != 0.0:
            out.add_(base.to(work), alpha=b)
    return out.to(models[0].dtype)
