"""A model-soup space: a candidate is one weight per seed model, realised as their weighted sum.

Named in a config's ``extensions:`` and chosen with ``space: soup``; the driver and every
worker import this file, so the space runs locally and on a Ray cluster alike.
"""

import torch
import yaml

from evomerge.spaces import SPACES
from evomerge.spaces.model_folder import write_model_folder
from evomerge.spaces.realised import FlatRows
from evomerge.spaces.vectors import VectorGenomes


class SoupSpace(VectorGenomes):
    """Genes are K weights in [0, 1]; crossover and mutation are the vector spaces'."""

    name = "soup"

    def __init__(self, num_seeds: int):
        self.num_seeds = num_seeds

    @classmethod
    def on_driver(cls, spec, evaluator):
        return cls(spec["count"])

    @classmethod
    def on_worker(cls, spec, host):
        return SoupWorker(host, host.seed_store(spec))

    def seed_genomes(self, evaluator, progress):
        """Each seed alone: the one-hot weight vectors."""
        return torch.eye(self.num_seeds)

    def describe(self, genes):
        return {"space": "soup", "weights": [round(float(w), 6) for w in genes]}


class SoupWorker:
    """Holds the K seeds (made by the plug-in, or mapped from its seed folders)."""

    def __init__(self, host, store):
        self.host, self.store = host, store

    def info(self):
        return {"num_params": self.store.num_seeds}  # the search sees K genes

    def one(self, genes):
        return torch.as_tensor(genes, dtype=torch.float32).reshape(1, -1)

    def batches(self, genomes):
        return [torch.as_tensor(genomes, dtype=torch.float32)]  # the whole batch at once

    def soup(self, genes):
        seeds = self.store.read(0, self.store.num_params).float()  # (K, N)
        weights = torch.as_tensor(genes, dtype=torch.float32).clamp(0, 1)
        return weights @ seeds / weights.sum(dim=-1, keepdim=True).clamp_min(1e-6)

    def realise(self, batch):
        return FlatRows(self.soup(batch))

    def export(self, genes, out, dtype, doc):
        flat = self.soup(torch.as_tensor(genes)[None])[0]
        layout = self.host.layout()
        sizes = [int(torch.Size(shape).numel()) for _, shape in layout]
        doc = {**doc, **SoupSpace(self.store.num_seeds).describe(genes)}
        files = self.host.export_info().get("files", [])
        texts = {"recipe.yaml": yaml.safe_dump(doc, sort_keys=False)}
        count = write_model_folder(out, layout, iter(flat.split(sizes)), dtype, files, texts)
        return {"tensors": count, "space": "soup"}


SPACES.register("soup", SoupSpace)
