"""Scoring merge recipes: each candidate is a gene vector, materialised into the plug-in's model.

The worker makes the seed models once (with the plug-in's ``make_seeds``), keeps them on its
device, and for every candidate merges them in memory by the recipe and hands the merged flat
parameters to the plug-in. Nothing goes to disk and only genes travel between processes.
"""

from __future__ import annotations

import torch

from evomerge.core.fitness import Fitness
from evomerge.spaces.recipe import RecipeSection, RecipeSpace


class RecipeFitness(Fitness):
    """Presents a recipe space of ``dim`` genes to the search; scores through ``inner``."""

    def __init__(self, inner: Fitness, section: RecipeSection, seeds: torch.Tensor):
        self.inner = inner
        self.seeds = seeds
        self.space = RecipeSpace(section, inner.param_layout(), len(seeds))
        self.num_params = self.space.dim
        self.num_examples = inner.num_examples
        self.score_name = inner.score_name
        self.nonnegative = inner.nonnegative

    def setup(self, device: torch.device) -> None:  # the inner plug-in is set up already
        self.seeds = self.seeds.to(device)

    def merged(self, genes: torch.Tensor) -> torch.Tensor:
        """The merged flat parameters of each row of ``genes``."""
        rows = [self.space.materialize(self.seeds, g.tolist()) for g in genes.cpu().double()]
        return torch.stack(rows)

    def score(self, params: torch.Tensor, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One candidate at a time: a worker holds one merged model, not a batch of them."""
        rows = [self.inner.score(self.merged(g[None]), example_ids) for g in params]
        return torch.cat([torch.as_tensor(r) for r in rows])

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        return self.inner.metrics(self.merged(params.reshape(1, -1))[0])
