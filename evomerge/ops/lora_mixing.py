"""Element-wise mixes of equally shaped tensors with per-tensor weights, as PEFT's
``add_weighted_adapter`` applies them to LoRA factors (or to their full updates before an SVD).

These are PEFT's semantics, which differ from the merge methods of :mod:`evomerge.ops` (mergekit's):

* ``sum``: ``sum w_i T_i``;
* ``magnitude_prune``: each ``T_i`` keeps its ``floor(density * numel)`` largest magnitudes,
  then ``sum w_i T_i``;
* ``ties``: magnitude-pruned as above; the sign of each element is elected from the
  *unweighted* pruned tensors (``total``: the sign of their sum; ``frequency``: of the count of
  signs); the weighted tensors agreeing with it are averaged (divided by how many agree, at
  least 1, not by their weights);
* ``dare_linear`` / ``dare_ties``: each ``T_i`` keeps each element with probability
  ``density`` (a Bernoulli mask drawn from ``generator``, one tensor after the other) and is
  divided by ``density``; then ``sum`` / the TIES election and mean.

A ``density`` of 1 or more prunes nothing (as PEFT). Weights are float32, as PEFT's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MIXES = ("sum", "magnitude_prune", "ties", "dare_linear", "dare_ties")
SIGN_METHODS = ("total", "frequency")


def keep_largest(t: torch.Tensor, density: float) -> torch.Tensor:
    """``t`` with all but its ``floor(density * numel)`` largest magnitudes zeroed."""
    if density >= 1:
        return t
    mask = torch.zeros(t.numel(), dtype=t.dtype)
    k = int(density * t.numel())
    mask[torch.topk(t.abs().reshape(-1), k=k).indices] = 1
    return t * mask.reshape(t.shape)


def keep_random(t: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's drop and rescale: each element kept with probability ``density``, divided by it."""
    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density), generator=generator)
    return (t * mask) / density


def agreeing_mean(stacked: torch.Tensor, weights: torch.Tensor, method: str) -> torch.Tensor:
    """TIES's sign election (on the unweighted ``stacked``) and mean of the weighted elements
    that agree with it."""
    signs = stacked.sign()
    votes = stacked.sum(dim=0) if method == "total" else signs.sum(dim=0)
    agree = signs == torch.where(votes >= 0, 1, -1)
    weighted = stacked * weights.view(-1, *([1] * (stacked.dim() - 1)))
    return (weighted * agree).sum(dim=0) / torch.clamp(agree.sum(dim=0), min=1.0)


def mix(
    kind: str,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float = 1.0,
    sign_method: str = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The ``kind`` mix of ``tensors`` weighted by ``weights`` (see the module's docstring)."""
    if kind not in MIXES:
        raise ValueError(f"'{kind}' is not one of {', '.join(MIXES)}")
    if density < 0:
        raise ValueError(f"density must be >= 0 (got {density})")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    if kind in ("magnitude_prune", "ties"):
        tensors = [keep_largest(t, density) for t in tensors]
    elif kind in ("dare_linear", "dare_ties"):
        tensors = [keep_random(t, density, generator) for t in tensors]
    stacked = torch.stack(list(tensors), dim=0)
    if kind in ("ties", "dare_ties"):
        return agreeing_mean(stacked, w, sign_method)
    return (stacked * w.view(-1, *([1] * (stacked.dim() - 1)))).sum(dim=0)
