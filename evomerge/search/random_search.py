"""Random search in a box: the baseline any recipe search has to beat.

Child i (the run's i-th evaluation) is drawn uniformly in ``bounds`` from its own key
``(seed, i)``, so the state holds no random generator and resume is exact. Only the best
candidate so far is kept. The bound and best-so-far helpers here are shared with CMA-ES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evomerge.core.keys import child_generator
from evomerge.search.m2n2 import Children


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


@dataclass(frozen=True)
class Best:
    """The best candidate so far (by mean score; the earliest wins ties)."""

    id: int
    genes: torch.Tensor
    scores: torch.Tensor

    @property
    def mean(self) -> float:
        return float(self.scores.double().mean())


def best_of(ids, params: torch.Tensor, scores: torch.Tensor, current: Best | None) -> Best:
    """``current`` or the best of a batch, whichever scores higher (``current`` on ties)."""
    means = scores.double().mean(dim=1).nan_to_num(nan=-math.inf)  # a failed candidate never wins
    i = int(torch.argmax(means))
    if current is not None and not bool(means[i] > current.mean):
        return current
    return Best(int(ids[i]), params[i].to(torch.float32).clone(), scores[i].float().clone())


def score_stats(rows: torch.Tensor) -> dict:
    """History statistics over the rows a strategy keeps (fitness = mean score: no niches)."""
    means = rows.float().mean(dim=1)  # float32 like M2N2's: the best row's max is its metric
    low, avg, high = means.min().item(), means.mean().item(), means.max().item()
    return {
        "archive_size": int(rows.shape[0]),
        "fitness": {"min": low, "mean": avg, "max": high},
        "train_score": {"mean": avg, "max": high},
    }


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

    @property
    def alpha(self) -> float:
        """No resource competition: scores may be any real number."""
        return 0.0


@dataclass(frozen=True)
class RandomState:
    best: Best
    evaluations: int
    next_id: int


class RandomSearch:
    """Uniform random search; the object holds only config and seed, state is explicit."""

    def __init__(self, config: RandomConfig, seed: int):
        self.config = config
        self.seed = seed
        self._gen = torch.Generator()

    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor) -> RandomState:
        """The best seed is the best so far; seeds take ids 0..k-1 and are not evaluations."""
        k = seed_params.shape[0]
        return RandomState(best_of(range(k), seed_params, seed_scores, None), 0, k)

    def ask(self, state: RandomState, n: int) -> Children:
        """``n`` uniform candidates; candidate i uses key (seed, evaluations + i)."""
        low, high = self.config.bounds
        dim = state.best.genes.numel()
        rows = []
        for i in range(n):
            gen = child_generator(self.seed, state.evaluations + i, self._gen)
            u = torch.rand(dim, generator=gen, dtype=torch.float64)
            rows.append(low + (high - low) * u)
        params = to_float32(torch.stack(rows), self.config.bounds)
        ids = tuple(range(state.next_id, state.next_id + n))
        return Children(params, ids, ((-1, -1),) * n)

    def tell(self, state: RandomState, children: Children, scores: torch.Tensor) -> RandomState:
        """Keep the better of the best so far and the batch; returns a new state."""
        n = len(children.ids)
        best = best_of(children.ids, children.params, scores, state.best)
        return replace(
            state, best=best, evaluations=state.evaluations + n, next_id=state.next_id + n
        )

    def best(self, state: RandomState) -> tuple[int, torch.Tensor, torch.Tensor]:
        return state.best.id, state.best.genes, state.best.scores

    def stats(self, state: RandomState) -> dict:
        return score_stats(state.best.scores[None])

    def state_to_tensors(self, state: RandomState) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"best_genes": state.best.genes, "best_scores": state.best.scores}
        meta = {
            "evaluations": state.evaluations,
            "next_id": state.next_id,
            "best_id": state.best.id,
        }
        return tensors, meta

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> RandomState:
        best = Best(
            int(meta["best_id"]), tensors["best_genes"].clone(), tensors["best_scores"].clone()
        )
        return RandomState(best, int(meta["evaluations"]), int(meta["next_id"]))
