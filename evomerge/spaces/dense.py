"""Dense space: a candidate is the plug-in's whole flat parameter vector.

For small models evolved from scratch or merged as explicit vectors (the M2N2 digits
experiments): mutation can add what no mix of seeds expresses. The first candidates are
Gaussian vectors or the plug-in's own seed models; a worker scores a whole batch in one call
to the plug-in, which may vectorise it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import yaml

from evomerge.core.errors import PluginError
from evomerge.core.keys import child_generator
from evomerge.spaces.model_folder import check_layout, write_model_folder
from evomerge.spaces.realised import FlatRows
from evomerge.spaces.vectors import VectorGenomes

SEED_STREAM = 1 << 63  # key indices at and above this are reserved for seed models


def gaussian_seeds(seed: int, count: int, n: int, std: float) -> torch.Tensor:
    """``count`` vectors of N(0, std^2) entries, each from its own reserved key."""
    return torch.stack(
        [
            torch.randn(n, generator=child_generator(seed, SEED_STREAM + i)) * std
            for i in range(count)
        ]
    )


def plugin_seeds(evaluator, spec: dict, progress) -> torch.Tensor:
    """The plug-in's ``make_seeds``, refused in one line when a seed is not finite."""
    progress.message(f"making {spec['count']} seed models with the fitness plug-in")
    params = evaluator.make_seeds(spec["count"], spec["seed"], dict(spec["options"]))
    for k in torch.nonzero(~torch.isfinite(params).all(dim=1)).flatten().tolist():
        raise PluginError(
            f"fitness: make_seeds() returned NaN or Inf weights in seed {k}; "
            "seeds must be finite (check the plug-in's training of its seeds)"
        )
    return params


class DenseSpace(VectorGenomes):
    """Genomes are the plug-in's flat float32 parameter vectors."""

    name = "dense"

    def __init__(self, spec: dict | None = None, num_params: int | None = None):
        self.spec = dict(spec or {})
        self.num_params = num_params

    #: children go to the workers as recipes over the members (the evaluator builds them)
    defers_children = False

    @classmethod
    def on_driver(cls, spec: dict, evaluator) -> DenseSpace:
        space = cls(spec, evaluator.info["num_params"])
        space.defers_children = bool(getattr(evaluator, "builds_children", False))
        return space

    @classmethod
    def on_worker(cls, spec: dict, host) -> DenseWorker:
        return DenseWorker(host)

    def seed_genomes(self, evaluator, progress) -> torch.Tensor:
        """Gaussian vectors (``seeds.kind: gaussian``) or the plug-in's seed models."""
        if self.spec.get("kind") == "gaussian":
            return gaussian_seeds(
                self.spec["seed"], self.spec["count"], self.num_params, self.spec["std"]
            )
        return plugin_seeds(evaluator, self.spec, progress)

    def describe(self, genome) -> dict:
        return {"space": "dense"}


class DenseWorker:
    """Scores a batch of flat rows in one call; exports a row cut into the named tensors."""

    def __init__(self, host):
        self.host = host

    def info(self) -> dict:
        return {}

    def one(self, genome) -> np.ndarray:
        return np.asarray(genome, dtype=np.float32).reshape(1, -1)

    def batches(self, genomes) -> Sequence:
        return [genomes]

    def realise(self, batch) -> FlatRows:
        return FlatRows(np.asarray(batch, dtype=np.float32))

    def export(self, genome, out, dtype: str, doc: dict) -> dict:
        flat = torch.as_tensor(genome).float().reshape(-1)
        layout = self.host.layout()
        check_layout(layout, flat.numel(), self.host.name)
        sizes = [math.prod(s) for _, s in layout]
        doc = {**doc, **DenseSpace().describe(genome)}
        count = write_model_folder(
            out,
            layout,
            iter(torch.split(flat, sizes)),
            dtype,
            self.host.export_info().get("files", []),
            {"recipe.yaml": yaml.safe_dump(doc, sort_keys=False)},
        )
        return {"tensors": count, "space": "dense"}
