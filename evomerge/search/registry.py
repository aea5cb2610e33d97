"""Strategy registry: a name in the config -> (config model, factory).

Users add their own without editing the package::

    from evomerge import register_strategy
    register_strategy("mine", MyConfig, MyStrategy)

A strategy is built as ``factory(config, seed)`` (``factory(config, seed, groups=...)`` when
registered with ``takes_groups=True``) and offers ``init / ask / tell / best / stats`` and
``state_to_tensors / state_from_tensors``; :class:`evomerge.search.base.Strategy` writes the
bookkeeping and the checkpoints (see docs/strategy.md). The built-ins are lazy
``"module:attr"`` entries naming a :class:`~evomerge.search.base.StrategyEntry`: listing them
imports no strategy, validating a config imports only the one it names.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from evomerge.core.registry import Registry
from evomerge.search.base import StrategyEntry

__all__ = ["STRATEGIES", "StrategyEntry", "make_strategy", "register_strategy"]

STRATEGIES: Registry[StrategyEntry] = Registry("strategy", "strategy.name")

for _name, _target in {
    "m2n2": "evomerge.search.m2n2:M2N2_STRATEGY",
    "ga": "evomerge.search.m2n2:GA_STRATEGY",
    "cmaes": "evomerge.search.cmaes:CMAES_STRATEGY",
    "random": "evomerge.search.random_search:RANDOM_STRATEGY",
    "map_elites": "evomerge.search.niche_archives:MAP_ELITES_STRATEGY",
    "pareto": "evomerge.search.niche_archives:PARETO_STRATEGY",
    "map": "evomerge.search.surrogate_fronts:MAP_STRATEGY",
    "sep_cmaes": "evomerge.search.sep_cmaes:SEP_CMAES_STRATEGY",
}.items():
    STRATEGIES.register(_name, _target)


def register_strategy(
    name: str, config: type[BaseModel], factory: Callable, *, takes_groups: bool = False
) -> None:
    """Make ``strategy.name: <name>`` available in configs.

    ``factory(config, seed)`` builds the strategy; with ``takes_groups=True`` it is called as
    ``factory(config, seed, groups=...)`` with the fitness plug-in's example groups.
    """
    STRATEGIES.register(name, StrategyEntry(config, factory, takes_groups))


def make_strategy(config: BaseModel, seed: int, groups: dict[str, list[int]] | None = None):
    """The strategy ``config.name`` names. ``groups``: the plug-in's example groups (name ->
    example ids), for strategies whose niches are built on them; ``None`` when there is no
    plug-in at hand (export), which only those strategies' scoring minds."""
    entry = STRATEGIES.get(config.name)
    if entry.takes_groups:
        return entry.factory(config, seed, groups=groups)
    return entry.factory(config, seed)
