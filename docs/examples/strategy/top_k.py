"""An archive of the k best members, for the variation search M2N2 and MAP-Elites use."""

from typing import Literal

from pydantic import Field

from evomerge.search.archives import Archive, Status, place, uniform_pair
from evomerge.search.variation import VariationConfig


class TopKArchive(Archive):
    """Keeps the ``size`` members of highest mean score; parents are drawn uniformly."""

    def __init__(self, size: int):
        self.size = size

    def add(self, state, cid, params, scores, buf=None):
        if -1 in state.ids:  # an empty slot: the child fills it
            return place(state, state.ids.index(-1), cid, params, scores, buf), Status.NEW
        means = state.scores.double().mean(dim=1)
        worst = int(means.argmin())
        if scores.double().mean() > means[worst]:
            return place(state, worst, cid, params, scores, buf), Status.IMPROVED
        return state, Status.NOT_KEPT

    def sample_parents(self, state, u_a, u_b):
        return uniform_pair(state, u_a, u_b)


class TopKConfig(VariationConfig):  # crossover, mutation_std, ... come from VariationConfig
    name: Literal["top_k"] = "top_k"
    archive_size: int = Field(10, ge=2, description="Members kept.")

    def archive(self, groups=None):
        return TopKArchive(self.archive_size)
