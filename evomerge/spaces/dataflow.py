"""Data-flow space (layer stacking): which seed's layer runs in each slot of a stacked model.

As in the data-flow-space (DFS) search of "Evolutionary Optimization of Model Merging Recipes"
(Akiba et al., 2024): the merged model is a path through the seeds' decoder layers. Here the
path has ``repeats x L`` slots (``L`` layers per seed); slot ``(r, l)`` runs layer ``l`` of one
of the ``K`` seeds, or nothing. Slots run in order (repeat 0 layers 0..L-1, then repeat 1 ...),
so a layer keeps its depth and ``repeats > 1`` lets the path go through the stack again.

A genome is a real vector in [0, 1] (CMA-ES with bounds, M2N2 in dense space): one *choice*
gene per slot (``floor(gene * (K + 1))``: seed 0..K-1, or K = no layer) and, when ``scales`` is
on, one *scale* gene per slot (``low + (high - low) * gene``) multiplying that layer's residual
updates (its attention output and MLP output projections). The scale is where the paper's
scaling matrix (input scale at a transition between models) sits in our departure: a scale of
the residual update folds exactly into the exported weights, an input scale would not.

Departure from the paper, deliberately: the paper lays out all ``M = K x L`` layers of all
models in a row, repeats that ``r`` times and switches each on or off (``T = M r`` bits); we keep
the depth order and choose one seed (or none) per depth, ``r x L`` choices over ``K + 1``
values. That is the same family of paths restricted to depth-ordered ones, with K times fewer
genes, and every seed is itself a genome of this space (its own layers in repeat 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Slot:
    """One layer of the stacked model: layer ``layer`` of seed ``seed``, residual x ``scale``."""

    seed: int
    layer: int
    scale: float = 1.0


class DataFlowSpace:
    """The gene layout of layer stacking over ``num_seeds`` seeds of ``num_layers`` layers."""

    def __init__(
        self,
        num_seeds: int,
        num_layers: int,
        repeats: int = 1,
        scales: bool = False,
        scale_range: Sequence[float] = (0.0, 2.0),
    ):
        if num_seeds < 1 or num_layers < 1 or repeats < 1:
            raise ValueError("data-flow space: seeds, layers and repeats must all be >= 1")
        low, high = (float(v) for v in scale_range)
        if not low < 1.0 < high:
            raise ValueError(
                f"scale_range: [{low}, {high}] must contain 1 strictly inside (the seeds' scale)"
            )
        self.num_seeds = num_seeds
        self.num_layers = num_layers
        self.repeats = repeats
        self.scales = scales
        self.scale_range = (low, high)
        self.num_slots = repeats * num_layers
        self.dim = self.num_slots * (2 if scales else 1)

    # -- genes -> slots ----------------------------------------------------------------------
    def choice(self, gene: float) -> int | None:
        """The seed a choice gene picks (None: no layer in that slot)."""
        g = min(1.0, max(0.0, float(gene)))
        b = min(self.num_seeds, int(math.floor(g * (self.num_seeds + 1))))
        return None if b == self.num_seeds else b

    def scale(self, gene: float) -> float:
        low, high = self.scale_range
        return low + (high - low) * min(1.0, max(0.0, float(gene)))

    def decode(self, genes: Sequence[float]) -> list[Slot]:
        """The stacked model's layers, in the order they run."""
        genes = [float(g) for g in genes]
        if len(genes) != self.dim:
            raise ValueError(f"data-flow genome: expected {self.dim} genes, got {len(genes)}")
        slots = []
        for s in range(self.num_slots):
            seed = self.choice(genes[s])
            if seed is None:
                continue
            scale = self.scale(genes[self.num_slots + s]) if self.scales else 1.0
            slots.append(Slot(seed, s % self.num_layers, scale))
        return slots

    # -- slots -> genes ----------------------------------------------------------------------
    def choice_gene(self, seed: int | None) -> float:
        """The middle of the bucket that picks ``seed`` (None: no layer)."""
        b = self.num_seeds if seed is None else seed
        return (b + 0.5) / (self.num_seeds + 1)

    def scale_gene(self, scale: float) -> float:
        low, high = self.scale_range
        return (scale - low) / (high - low)

    def seed_genome(self, k: int) -> torch.Tensor:
        """The genome of seed ``k`` itself: its own layers in repeat 0, nothing after, scale 1."""
        choices = [
            self.choice_gene(k if s < self.num_layers else None) for s in range(self.num_slots)
        ]
        scales = [self.scale_gene(1.0)] * self.num_slots if self.scales else []
        return torch.tensor(choices + scales, dtype=torch.float32)

    def describe(self, slots: Sequence[Slot]) -> list[dict]:
        """The slots for people (``recipe.yaml``)."""
        return [{"seed": s.seed, "layer": s.layer, "scale": round(s.scale, 6)} for s in slots]


def contiguous_runs(slots: Sequence[Slot]) -> list[tuple[int, int, int]]:
    """``(seed, first, stop)`` runs of consecutive layers of one seed (mergekit slices)."""
    runs: list[list[int]] = []
    for s in slots:
        if runs and runs[-1][0] == s.seed and runs[-1][2] == s.layer:
            runs[-1][2] += 1
        else:
            runs.append([s.seed, s.layer, s.layer + 1])
    return [tuple(r) for r in runs]


def passthrough_doc(
    slots: Sequence[Slot], seeds: Sequence[str], base: int, dtype: str
) -> dict | None:
    """The stacked model as a mergekit ``passthrough`` config, or None where inexpressible.

    mergekit's passthrough has no per-slot residual scale, so only stacks with every scale 1
    (and at least one layer) are written. ``base_model`` names the seed whose embeddings, final
    norm and head the stacked model uses.
    """
    if not slots or any(s.scale != 1.0 for s in slots):
        return None
    return {
        "merge_method": "passthrough",
        "base_model": seeds[base],
        "slices": [
            {"sources": [{"model": seeds[seed], "layer_range": [first, stop]}]}
            for seed, first, stop in contiguous_runs(slots)
        ],
        "dtype": dtype,
    }
