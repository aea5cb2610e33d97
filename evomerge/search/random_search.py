"""Random search in a box: the baseline any recipe search has to beat.

Child i (the run's i-th evaluation) is drawn uniformly in ``bounds`` from its own key
``(seed, i)``, so the state holds no random generator and resume is exact. Only the best
candidate so far is kept. The bound helpers here are shared with CMA-ES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evomerge.core.keys import child_generator
from evomerge.search.base import (
    BEST_CODEC,
    Best,
    BestSoFar,
    Children,
    Proposal,
    StrategyEntry,
    best_of,
    score_stats,
)

__all__ = [
    "Best",
    "RandomConfig",
    "RandomSearch",
    "RandomState",
    "best_of",
    "check_bounds",
    "float32_bounds",
    "score_stats",
    "to_float32",
]


def check_bounds(value: tuple[float, float] | None) -> tuple[float, float] | None:
    """Bounds must be finite with low < high: a validator shared by the strategy configs."""
    if value is None:
        return None
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("bounds must be finite numbers [low, high]")
    if not low < high:
        raise ValueError(f"bounds: low {low} must be below high {high}")
    return value


def float32_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """The widest float32 interval inside ``bounds``: casting a gene to float32 may round it
    across a bound that float32 cannot represent, so evaluated genes are clamped to this."""
    low, high = np.float32(bounds[0]), np.float32(bounds[1])
    if float(low) < bounds[0]:
        low = np.nextafter(low, np.float32(np.inf))
    if float(high) > bounds[1]:
        high = np.nextafter(high, np.float32(-np.inf))
    return float(low), float(high)


def to_float32(genes: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """Genes as evaluated: float32, and still inside ``bounds`` after the rounding."""
    out = genes.to(torch.float32)
    if bounds is None:
        return out
    low, high = float32_bounds(bounds)
    return out.clamp_(low, high)


class RandomConfig(BaseModel):
    """``strategy:`` section for ``name: random``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["random"] = "random"
    bounds: tuple[float, float] = Field(
        (0.0, 1.0), description="[low, high] of every gene; candidates are uniform in the box."
    )

    @field_validator("bounds")
    @classmethod
    def validate_bounds(cls, value):
        return check_bounds(value)


@dataclass(frozen=True)
class RandomState:
    best: Best = field(metadata=BEST_CODEC)
    evaluations: int
    next_id: int


class RandomSearch(BestSoFar):
    """Uniform random search; the object holds only config and seed, state is explicit."""

    state_type = RandomState

    def __init__(self, config: RandomConfig, seed: int):
        super().__init__(config, seed)
        self._gen = torch.Generator()

    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor) -> RandomState:
        """The best seed is the best so far; seeds take ids 0..k-1 and are not evaluations."""
        return RandomState(self.best_of_seeds(seed_params, seed_scores), 0, len(seed_params))

    def _ask(self, state: RandomState, n: int) -> Proposal:
        """``n`` uniform candidates; candidate i uses key (seed, evaluations + i)."""
        low, high = self.config.bounds
        dim = state.best.genes.numel()
        rows = []
        for i in range(n):
            gen = child_generator(self.seed, state.evaluations + i, self._gen)
            u = torch.rand(dim, generator=gen, dtype=torch.float64)
            rows.append(low + (high - low) * u)
        return Proposal(to_float32(torch.stack(rows), self.config.bounds))

    def _tell(self, state: RandomState, children: Children, scores: torch.Tensor):
        return state  # only the best so far is kept (BestSoFar.tell)

    def stats(self, state: RandomState) -> dict:
        return score_stats(state.best.scores[None])


RANDOM_STRATEGY = StrategyEntry(RandomConfig, RandomSearch)
