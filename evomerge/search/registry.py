"""Strategy registry: a name in the config -> (config model, factory).

Users add their own without editing the package::

    from evomerge import register_strategy
    register_strategy("mine", MyConfig, MyStrategy)

A strategy is built as ``factory(config, seed)`` and offers ``init / ask / tell / best / stats``
and ``state_to_tensors / state_from_tensors`` (see :class:`evomerge.search.m2n2.M2N2`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from evomerge.search.cmaes import CMAES, CMAESConfig
from evomerge.search.m2n2 import M2N2, GAConfig, M2N2Config
from evomerge.search.niche_archives import MapElites, MapElitesConfig, Pareto, ParetoConfig
from evomerge.search.random_search import RandomConfig, RandomSearch
from evomerge.search.sep_cmaes import SepCMAES, SepCMAESConfig


@dataclass(frozen=True)
class StrategyEntry:
    config: type[BaseModel]
    factory: Callable


STRATEGIES: dict[str, StrategyEntry] = {}


def register_strategy(name: str, config: type[BaseModel], factory: Callable) -> None:
    """Make ``strategy.name: <name>`` available in configs."""
    STRATEGIES[name] = StrategyEntry(config, factory)


def make_strategy(config: BaseModel, seed: int):
    return STRATEGIES[config.name].factory(config, seed)


register_strategy("m2n2", M2N2Config, M2N2)
register_strategy("ga", GAConfig, M2N2)
register_strategy("cmaes", CMAESConfig, CMAES)
register_strategy("random", RandomConfig, RandomSearch)
register_strategy("map_elites", MapElitesConfig, MapElites)
register_strategy("pareto", ParetoConfig, Pareto)
register_strategy("sep_cmaes", SepCMAESConfig, SepCMAES)
