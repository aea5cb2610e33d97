"""Data-flow space: a candidate is a gene vector choosing which seed layer runs in each slot.

The genes vary and start as the dense space's do (the plug-in's ``make_seeds`` gives each
seed's own stack); what they stand for is :class:`~evomerge.spaces.dataflow.DataFlowSpace`'s
decoding. A plug-in that scores layer stacks (``fitness/dataflow_lm.py``) declares
``space = "dataflow"`` and offers ``stack(genes)``, which assembles the candidate's stack in
its resident model from views of the seeds' layers (no weights copied); the export writes the
stack as a normal model folder (:func:`~evomerge.tensors.layer_stack.write_stacked`) with
``recipe.yaml`` and, when every scale is 1, a mergekit ``passthrough`` config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import yaml

from evomerge.spaces.dataflow import passthrough_doc
from evomerge.spaces.dense import DenseSpace
from evomerge.spaces.realised import Loaded
from evomerge.tensors.dtypes import DTYPES
from evomerge.tensors.layer_stack import write_stacked


class DataFlowGeneSpace(DenseSpace):
    """Genomes are layer-stack gene vectors, seeded like dense vectors."""

    name = "dataflow"

    @classmethod
    def on_worker(cls, spec: dict, host) -> DataFlowWorker:
        return DataFlowWorker(host)

    def describe(self, genome) -> dict:
        return {"space": "dataflow"}


class DataFlowWorker:
    """Puts each candidate's stack into the plug-in's model; exports stacks as folders."""

    def __init__(self, host):
        self.host = host
        self.flow = host.plugin.flow  # the plug-in's gene layout over its seeds

    def info(self) -> dict:
        return {}

    def one(self, genome) -> np.ndarray:
        return np.asarray(genome, dtype=np.float32).reshape(1, -1)

    def batches(self, genomes) -> Sequence:
        return list(np.asarray(genomes, dtype=np.float32).reshape(-1, self.flow.dim))

    def realise(self, genes) -> Loaded:
        self.host.call("stack", torch.as_tensor(genes))
        return Loaded()

    def describe(self, genes) -> dict:
        plugin = self.host.plugin
        slots = self.flow.decode(torch.as_tensor(genes).double().tolist())
        return {
            "space": "dataflow",
            "dataflow": {
                "seeds": [str(p) for p in plugin.seed_paths],
                "base": plugin.base,
                "repeats": plugin.repeats,
                "layers": len(slots),
                "slots": self.flow.describe(slots),
            },
        }

    def export(self, genes, out, dtype: str, doc: dict) -> dict:
        """Write the stack as a model folder, with ``recipe.yaml`` (and ``mergekit.yaml``)."""
        plugin = self.host.plugin
        slots = self.flow.decode(torch.as_tensor(genes).double().tolist())
        seeds = [str(p) for p in plugin.seed_paths]
        doc = {**doc, **self.describe(genes)}
        texts = {"recipe.yaml": yaml.safe_dump(doc, sort_keys=False)}
        mergekit = passthrough_doc(slots, seeds, plugin.base, dtype)
        if mergekit is not None:
            note = (
                "# The same layer stack as a mergekit passthrough merge. Embeddings, final norm\n"
                "# and head are base_model's (mergekit takes them from the first/last slice's\n"
                "# model: the same when those are base_model).\n"
            )
            texts["mergekit.yaml"] = note + yaml.safe_dump(mergekit, sort_keys=False)
        count = write_stacked(seeds, plugin.base, slots, out, DTYPES[dtype], texts)
        return {"tensors": count, "space": "dataflow", "layers": len(slots)}
