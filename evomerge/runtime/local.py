"""In-process evaluation: one fitness instance, the whole batch in one call to the plug-in."""

from __future__ import annotations

import torch

from evomerge.core.contracts import DeferredChildren
from evomerge.runtime.host import FitnessHost


def transportable(params):
    """Dense candidates as numpy (children sent as recipes, built here); lineage genomes as
    they are (hosts materialise them)."""
    if isinstance(params, DeferredChildren):
        params = params.materialise()
    return params.numpy() if isinstance(params, torch.Tensor) else params


class LocalEvaluator:
    """Scores candidates in this process on ``device``; the plug-in vectorises the batch."""

    kind = "local"

    def __init__(
        self,
        spec: str,
        options: dict,
        device: str = "cpu",
        space: dict | None = None,
        seeds_on_device="auto",
        extensions=(),
        threads=None,
    ):
        self.host = FitnessHost(
            spec,
            options,
            device,
            threads=threads,
            space=space,
            seeds_on_device=seeds_on_device,
            extensions=extensions,
        )
        self.info = self.host.info()
        self.workers = 1

    def score(self, params, example_ids=None) -> torch.Tensor:
        """``(B, E)`` scores, or ``(B, len(example_ids))`` on those training examples only."""
        return torch.from_numpy(self.host.score(transportable(params), example_ids))

    def metrics(self, params) -> dict[str, float]:
        return self.host.metrics(transportable(params))

    def lineage_seeds(self):
        """The store of the seeds the candidates mix (see ``tensors.seed_store``)."""
        return self.host.lineage_seeds

    def make_seeds(self, count: int, seed: int, options: dict) -> torch.Tensor:
        return torch.from_numpy(self.host.make_seeds(count, seed, options))

    def seed_genes(self) -> list[float]:
        return self.host.seed_genes()

    def describe(self) -> str:
        return f"local evaluator on {self.host.device}"

    def close(self) -> None:
        pass
