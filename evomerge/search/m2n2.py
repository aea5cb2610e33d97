"""M2N2 (natural niches) and its GA baseline: the variation search over a competition archive.

One child: parent A ~ competition fitness; parent B ~ attraction to A (what B solves that A
does not, weighted by scarcity); split-point SLERP crossover; optional Gaussian mutation; the
child joins the archive if it is not the least fit of the P+1 rows
(:class:`~evomerge.search.archives.CompetitionArchive`). ``ga`` is the same search with
``alpha = 0`` and no attraction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from evomerge.search.archives import ArchiveState, CompetitionArchive
from evomerge.search.base import Children, StrategyEntry
from evomerge.search.variation import VariationConfig, VariationSearch

__all__ = [
    "M2N2",
    "ArchiveState",
    "Children",
    "GAConfig",
    "M2N2Config",
    "UncompetedConfig",
    "VariationConfig",
]


class M2N2Config(VariationConfig):
    """``strategy:`` section for ``name: m2n2``."""

    name: Literal["m2n2"] = "m2n2"
    archive_size: int = Field(20, ge=2, description="Members kept in the archive.")
    alpha: float = Field(1.0, ge=0, description="Resource-sharing exponent (0: no competition).")
    attraction: bool = Field(True, description="Choose parent B by attraction to parent A.")

    def archive(self, groups=None) -> CompetitionArchive:
        return CompetitionArchive(self.archive_size, self.alpha, self.attraction)


#: Archives without resource competition or attraction (an earlier name of the base config).
UncompetedConfig = VariationConfig


class GAConfig(VariationConfig):
    """``strategy:`` section for ``name: ga``: M2N2 without competition (alpha 0) or attraction."""

    name: Literal["ga"] = "ga"
    archive_size: int = Field(20, ge=2, description="Members kept in the archive.")

    def archive(self, groups=None) -> CompetitionArchive:
        return CompetitionArchive(self.archive_size, alpha=0.0, attraction=False)


#: M2N2 and GA are the variation search; the config picks the archive.
M2N2 = VariationSearch

M2N2_STRATEGY = StrategyEntry(M2N2Config, VariationSearch)
GA_STRATEGY = StrategyEntry(GAConfig, VariationSearch)
