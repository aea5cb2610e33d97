"""In-process evaluation: one fitness instance, the whole batch in one call to the plug-in."""

from __future__ import annotations

import torch

from .host import FitnessHost


class LocalEvaluator:
    """Scores candidates in this process on ``device``; the plug-in vectorises the batch."""

    kind = "local"

    def __init__(self, spec: str, options: dict, device: str = "cpu", recipe: dict | None = None):
        self.host = FitnessHost(spec, options, device, recipe=recipe)
        self.info = self.host.info()
        self.workers = 1

    def score(self, params: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.host.score(params.numpy()))

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        return self.host.metrics(params.numpy())

    def make_seeds(self, count: int, seed: int, options: dict) -> torch.Tensor:
        return torch.from_numpy(self.host.make_seeds(count, seed, options))

    def describe(self) -> str:
        return f"local evaluator on {self.host.device}"

    def close(self) -> None:
        pass
