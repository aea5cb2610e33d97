"""Runtime: fitness plug-ins and the evaluators that run them (in-process or on Ray).

Evaluators are a registry (``evaluator.kind`` in configs): an entry is a callable
``build(section, fitness, space, name) -> Evaluator`` (see :class:`evomerge.core.contracts.
Evaluator`), so a user's own evaluator plugs in with ``EVALUATORS.register("mine", ...)``.
"""

from __future__ import annotations

from evomerge.core.extensions import package
from evomerge.core.fitness import Fitness
from evomerge.core.registry import Registry
from evomerge.runtime.local import LocalEvaluator

EVALUATORS: Registry = Registry("evaluator", "evaluator.kind")


def build_local(section, fitness, space: dict | None, name: str | None, extensions=()):
    """The in-process evaluator of an ``evaluator: {kind: local}`` section."""
    return LocalEvaluator(
        fitness.plugin,
        fitness.options,
        section.device,
        space,
        seeds_on_device=section.seeds_on_device,
        extensions=extensions,
        threads=section.threads,
    )


def build_ray(section, fitness, space: dict | None, name: str | None, extensions=()):
    """The Ray actor pool of an ``evaluator: {kind: ray}`` section."""
    from evomerge.runtime.ray_pool import RayEvaluator

    return RayEvaluator(
        fitness.plugin,
        fitness.options,
        workers=section.workers,
        num_cpus=section.num_cpus,
        num_gpus=section.num_gpus,
        address=section.address,
        space=space,
        max_restarts=section.max_restarts,
        chunk_size=section.chunk_size,
        timeout_s=section.timeout_s,
        name=name,
        seeds_on_device=section.seeds_on_device,
        extensions=extensions,
    )


EVALUATORS.register("local", build_local)
EVALUATORS.register("ray", build_ray)


def make_evaluator(
    section, fitness, space: dict | None = None, name: str | None = None, extensions=()
):
    """Build the evaluator a config's ``evaluator`` section describes.

    ``space`` (:func:`evomerge.run.loop.space_spec`) says what candidates are and how the
    workers make the seeds they realise them from. ``name`` (the run's) names Ray workers
    ``evomerge-<name>-<i>``. ``extensions`` (the config's resolved entries) are imported by
    every worker first; files travel as their text.
    """
    build = EVALUATORS.get(section.kind)
    return build(section, fitness, space, name, extensions=package(extensions))


__all__ = ["EVALUATORS", "Fitness", "LocalEvaluator", "make_evaluator"]
