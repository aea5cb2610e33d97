"""MAP-Elites (grid archive) and a Pareto archive: the variation search with niches on example
groups.

Both make children as M2N2 does (:mod:`~evomerge.search.variation`) and differ only in their
archive (:mod:`~evomerge.search.archives`). Their niches are defined on *example groups* the
fitness plug-in names (``Fitness.example_groups()``: the digit classes and their halves on
digits, the tasks of the causal-LM fitness): a group's score is the member's mean score over
its examples.

* ``map_elites``: a ``cells ** len(descriptors)`` grid over the descriptor groups' scores; a
  child takes its cell when the cell is empty or its mean score is higher (the occupant stays
  on ties). Parents: two members drawn uniformly from the filled cells.
* ``pareto``: members are the non-dominated set over the objective groups (no other member at
  least as good on every objective and better on one). A dominated child is dropped; a kept
  child evicts the members it dominates; when the archive is full, the member with the smallest
  crowding distance (NSGA-II's, boundary members infinite) goes, first on ties, which may be the
  child itself. Parents: two members drawn uniformly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from evomerge.search.archives import (
    ExampleGroups,
    GridArchive,
    ParetoArchive,
    crowding,
    dominates,
)
from evomerge.search.base import StrategyEntry
from evomerge.search.random_search import check_bounds
from evomerge.search.variation import VariationConfig, VariationSearch

__all__ = [
    "MapElites",
    "MapElitesConfig",
    "Pareto",
    "ParetoConfig",
    "crowding",
    "dominates",
]


class MapElitesConfig(VariationConfig):
    """``strategy:`` section for ``name: map_elites``."""

    name: Literal["map_elites"] = "map_elites"
    descriptors: list[str] = Field(
        description="Example groups whose mean scores place a member (e.g. [even, odd]).",
        min_length=1,
        max_length=3,
    )
    cells: int = Field(10, ge=1, description="Cells along each descriptor.")
    range: tuple[float, float] = Field(
        (0.0, 1.0), description="[low, high] of every descriptor (scores outside are clipped)."
    )

    @field_validator("range")
    @classmethod
    def validate_range(cls, value):
        return check_bounds(value)

    @property
    def archive_size(self) -> int:
        return self.cells ** len(self.descriptors)

    def archive(self, groups=None) -> GridArchive:
        by_group = ExampleGroups(self.name, "descriptors", self.descriptors, groups)
        return GridArchive(by_group, self.cells, self.range)


class ParetoConfig(VariationConfig):
    """``strategy:`` section for ``name: pareto``."""

    name: Literal["pareto"] = "pareto"
    objectives: list[str] = Field(
        description="Example groups, one objective each (e.g. the tasks).", min_length=2
    )
    archive_size: int = Field(20, ge=2, description="Most members kept (crowding decides).")

    def archive(self, groups=None) -> ParetoArchive:
        by_group = ExampleGroups(self.name, "objectives", self.objectives, groups)
        return ParetoArchive(by_group, self.archive_size)


#: MAP-Elites and Pareto are the variation search; the config picks the archive.
MapElites = Pareto = VariationSearch

MAP_ELITES_STRATEGY = StrategyEntry(MapElitesConfig, VariationSearch, takes_groups=True)
PARETO_STRATEGY = StrategyEntry(ParetoConfig, VariationSearch, takes_groups=True)
