"""Old import paths of modules that moved into the layered packages, kept working.

``import evomerge.merge.recipe`` (or ``from evomerge.genome.lineage import Lineage``) still
works: a finder on ``sys.meta_path`` answers each old name with the module at its new home, so
plug-ins and scripts written against an earlier layout keep running. New code imports the new
paths. Only names are stored here, so this module imports nothing above the core layer.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

#: old module path -> new module path
MOVED = {
    "evomerge.contracts": "evomerge.core.contracts",
    "evomerge.errors": "evomerge.core.errors",
    "evomerge.files": "evomerge.core.files",
    "evomerge.safe_yaml": "evomerge.core.safe_yaml",
    "evomerge.search.keys": "evomerge.core.keys",
    "evomerge.plugins": "evomerge.core.plugins",
    "evomerge.bundled": "evomerge.core.bundled",
    "evomerge.runtime.fitness": "evomerge.core.fitness",
    "evomerge.merge.safetensors_format": "evomerge.tensors.safetensors_format",
    "evomerge.merge.safetensors_io": "evomerge.tensors.safetensors_io",
    "evomerge.merge.sharded_writer": "evomerge.tensors.sharded_writer",
    "evomerge.merge.finite": "evomerge.tensors.finite",
    "evomerge.merge.parallel": "evomerge.tensors.parallel",
    "evomerge.genome.seed_store": "evomerge.tensors.seed_store",
    "evomerge.merge.layer_stack": "evomerge.tensors.layer_stack",
    "evomerge.merge.operators": "evomerge.ops.operators",
    "evomerge.merge.op_support": "evomerge.ops.op_support",
    "evomerge.merge.task_vectors": "evomerge.ops.task_vectors",
    "evomerge.merge.spherical": "evomerge.ops.spherical",
    "evomerge.merge.della": "evomerge.ops.della",
    "evomerge.merge.sce": "evomerge.ops.sce",
    "evomerge.merge.ranking": "evomerge.ops.ranking",
    "evomerge.merge.interpolation": "evomerge.ops.interpolation",
    "evomerge.merge.pointwise": "evomerge.ops.pointwise",
    "evomerge.merge.data_aware": "evomerge.ops.data_aware",
    "evomerge.merge.statistics": "evomerge.ops.statistics",
    "evomerge.genome.dense": "evomerge.ops.vectors",
    "evomerge.genome.spaces": "evomerge.spaces.genomes",
    "evomerge.genome.lineage": "evomerge.spaces.lineage",
    "evomerge.genome.dataflow": "evomerge.spaces.dataflow",
    "evomerge.merge.recipe": "evomerge.spaces.recipe",
    "evomerge.runtime.resident": "evomerge.spaces.resident_recipe",
    "evomerge.search.loop": "evomerge.run.loop",
    "evomerge.search.export": "evomerge.run.export",
    "evomerge.search.checkpoint": "evomerge.run.checkpoint",
    "evomerge.search.rundir": "evomerge.run.rundir",
    "evomerge.config": "evomerge.run.config",
    "evomerge.tracking": "evomerge.run.tracking",
    "evomerge.config_reference": "evomerge.interface.config_reference",
    "evomerge.runtime.lm_text": "evomerge.kit.lm_text",
    "evomerge.runtime.empty_init": "evomerge.kit.empty_init",
    "evomerge.fitness.lm_eval": "evomerge.fitness.lm_harness",
}

#: old packages that no longer exist -> the package that now holds their modules
MOVED_PACKAGES = {"evomerge.genome": "evomerge.spaces"}


def new_name(name: str) -> str | None:
    """Where module ``name`` lives now, or None when it did not move."""
    if name in MOVED:
        return MOVED[name]
    if name in MOVED_PACKAGES:
        return MOVED_PACKAGES[name]
    parent, _, leaf = name.rpartition(".")
    if parent in MOVED_PACKAGES:
        return f"{MOVED_PACKAGES[parent]}.{leaf}"
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # Already executed at its new path; the import system has just set its ``__spec__``
        # to the old name's, so give it back its own.
        module.__spec__ = self.own_spec


class MovedModules(importlib.abc.MetaPathFinder):
    """Answers an old module path with the module at its new path (the same object)."""

    def find_spec(self, name, path=None, target=None):
        new = new_name(name)
        if new is None:
            return None
        is_package = name in MOVED_PACKAGES
        return importlib.machinery.ModuleSpec(name, _Alias(new), is_package=is_package)


def install() -> None:
    """Put the finder in front of the import system, once."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())
