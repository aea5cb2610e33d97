"""Runtime: fitness plug-ins and the evaluators that run them (in-process or on Ray)."""

from __future__ import annotations

from .fitness import Fitness
from .local import LocalEvaluator


def make_evaluator(section, fitness):
    """Build the evaluator a config's ``evaluator`` section describes."""
    if section.kind == "local":
        return LocalEvaluator(fitness.plugin, fitness.options, section.device)
    from .ray_pool import RayEvaluator

    return RayEvaluator(
        fitness.plugin,
        fitness.options,
        workers=section.workers,
        num_cpus=section.num_cpus,
        num_gpus=section.num_gpus,
        address=section.address,
    )


__all__ = ["Fitness", "LocalEvaluator", "make_evaluator"]
