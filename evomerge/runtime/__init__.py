"""Runtime: fitness plug-ins and the evaluators that run them (in-process or on Ray)."""

from __future__ import annotations

from evomerge.core.extensions import package
from evomerge.core.fitness import Fitness
from evomerge.runtime.local import LocalEvaluator


def make_evaluator(
    section,
    fitness,
    recipe: dict | None = None,
    lineage: dict | None = None,
    name: str | None = None,
    extensions=(),
):
    """Build the evaluator a config's ``evaluator`` section describes.

    ``recipe`` (seeds to make and the recipe section) turns each worker's fitness into a
    recipe fitness: candidates are then gene vectors, merged in the worker. ``lineage`` (seeds
    to make) lets workers materialise lineage genomes over those seeds. ``name`` (the run's)
    names Ray workers ``evomerge-<name>-<i>``. ``extensions`` (the config's resolved entries)
    are imported by every worker first; files travel as their text.
    """
    extensions = package(extensions)
    if section.kind == "local":
        return LocalEvaluator(
            fitness.plugin,
            fitness.options,
            section.device,
            recipe=recipe,
            lineage=lineage,
            seeds_on_device=section.seeds_on_device,
            extensions=extensions,
        )
    from evomerge.runtime.ray_pool import RayEvaluator

    return RayEvaluator(
        fitness.plugin,
        fitness.options,
        workers=section.workers,
        num_cpus=section.num_cpus,
        num_gpus=section.num_gpus,
        address=section.address,
        recipe=recipe,
        max_restarts=section.max_restarts,
        chunk_size=section.chunk_size,
        timeout_s=section.timeout_s,
        lineage=lineage,
        name=name,
        seeds_on_device=section.seeds_on_device,
        extensions=extensions,
    )


__all__ = ["Fitness", "LocalEvaluator", "make_evaluator"]
