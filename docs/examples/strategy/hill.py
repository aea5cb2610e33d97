"""(1+lambda) hill climbing: a complete strategy on evomerge's Strategy base class."""

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from evomerge.core.keys import child_generator
from evomerge.search.base import BEST_CODEC, Best, BestSoFar, Proposal, score_stats


class HillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["hill"] = "hill"
    std: float = Field(0.01, gt=0, description="Std of the Gaussian step from the best.")


@dataclass(frozen=True)
class HillState:
    best: Best = field(metadata=BEST_CODEC)  # checkpoint: best_genes, best_scores, best_id
    evaluations: int  # every state has these two; the base class keeps them
    next_id: int


class Hill(BestSoFar):
    """Children are Gaussian steps from the best so far; BestSoFar keeps the best."""

    state_type = HillState

    def init(self, seed_params, seed_scores):
        return HillState(self.best_of_seeds(seed_params, seed_scores), 0, len(seed_params))

    def _ask(self, state, n):
        genes = state.best.genes
        rows = []
        for i in range(n):  # child i of the run draws from key (seed, i)
            gen = child_generator(self.seed, state.evaluations + i)
            rows.append(genes + self.config.std * torch.randn(genes.shape, generator=gen))
        return Proposal(torch.stack(rows), parents=((state.best.id, -1),) * n)

    def _tell(self, state, children, scores):
        return state  # nothing to learn but the best, which BestSoFar.tell updates

    def stats(self, state):
        return score_stats(state.best.scores[None])
