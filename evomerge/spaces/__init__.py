"""Genome spaces: the kinds of candidate a search can evolve, each one :class:`Space`.

``dense`` (parameter vectors), ``lineage`` (exact mixes of seeds), ``recipe`` (merge-recipe
genes), ``dataflow`` (layer stacks) and ``adapter`` (weightings of LoRA adapters). A run names
its space by its config (a ``recipe:`` section, ``strategy.space``) or takes the one its
plug-in declares (``Fitness.space``); users add their own with
``SPACES.register("name", "my_pkg.module:MySpace")``. A registered class offers
``on_driver(spec, evaluator)`` (variation, seeding, storage) and ``on_worker(spec, host)``
(realisation and export where the seeds and plug-in live).
"""

from __future__ import annotations

from evomerge.core.registry import Registry

SPACES: Registry = Registry("space", "strategy.space")
SPACES.register("dense", "evomerge.spaces.dense:DenseSpace")
SPACES.register("lineage", "evomerge.spaces.lineage_space:LineageSpace")
SPACES.register("recipe", "evomerge.spaces.recipe_space:RecipeGeneSpace")
SPACES.register("dataflow", "evomerge.spaces.dataflow_space:DataFlowGeneSpace")
SPACES.register("adapter", "evomerge.spaces.adapter_space:AdapterGeneSpace")

__all__ = ["SPACES"]
