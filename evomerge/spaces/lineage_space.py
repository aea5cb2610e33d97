"""Lineage space: candidates are :class:`~evomerge.spaces.lineage.Lineage` mixes of the seeds.

On the driver the space varies lineages exactly (SLERP's angles from the seeds' Gram) and
starts the search from the seeds themselves; on a worker, :func:`load_into` writes a lineage
into the plug-in's resident model, or into one flat row the plug-in scores, and an export
writes it tensor by tensor: the worker never holds more than the model and one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import yaml

from evomerge.core.errors import EvomergeError, PluginError
from evomerge.spaces import lineage
from evomerge.spaces.lineage import Lineage, SeedGram, load_into
from evomerge.spaces.loaded_candidate import LoadedCandidate
from evomerge.spaces.model_folder import check_layout, write_model_folder
from evomerge.spaces.realised import FlatRows, Loaded
from evomerge.spaces.resident_recipe import on_device


class LineageBatch:
    """Lineage genomes to score: a list that slices into smaller batches (Ray chunks)."""

    def __init__(self, members: Sequence[Lineage]):
        self.members = list(members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LineageBatch(self.members[i])
        return self.members[i]

    def __iter__(self):
        return iter(self.members)


class LineageSpace:
    """Genomes are lineages over ``K`` seeds; SLERP angles come from the seeds' Gram."""

    name = "lineage"
    #: a worker writes one candidate into the model and keeps it until the next: scoring one
    #: child in several calls costs one realisation when they follow each other (racing)
    realises_singly = True
    #: every worker mixes the same seeds: made once per run (on Ray, one copy a node)
    shares_seeds = True

    def __init__(self, gram: SeedGram | None = None, store=None):
        self._gram = gram
        self.store = store

    @property
    def gram(self) -> SeedGram | None:
        """The seeds' Gram, made on first use (one pass over the seeds; an export needs none)."""
        if self._gram is None and self.store is not None:
            s = self.store
            self._gram = SeedGram(s.read, s.num_params, s.num_seeds)
        return self._gram

    @classmethod
    def from_seeds(cls, seeds: torch.Tensor) -> LineageSpace:
        """The space over seeds held as a ``(K, N)`` tensor."""
        k, n = seeds.shape
        return cls(SeedGram(lineage.dense_reader(seeds), n, k))

    @classmethod
    def from_store(cls, store) -> LineageSpace:
        """The space over a :mod:`~evomerge.tensors.seed_store` store (in memory or mapped)."""
        return cls(store=store)

    @classmethod
    def on_driver(cls, spec: dict, evaluator) -> LineageSpace:
        """The driver reads the workers' seeds (lazily) for the inner products SLERP needs."""
        return cls.from_store(evaluator.lineage_seeds())

    @classmethod
    def on_worker(cls, spec: dict, host) -> LineageWorker:
        return LineageWorker(host, host.seed_store(spec))

    def seed_genomes(self, evaluator=None, progress=None) -> LineageBatch:
        """The seeds themselves, after the one pass over them that also finds NaN or Inf."""
        if progress is not None:
            progress.message(f"making {self.gram.num_seeds} seed models to merge in lineage space")
        norms = np.diagonal(self.gram.prefix(self.gram.num_params))
        for k in np.flatnonzero(~np.isfinite(norms)):
            folders = getattr(self.store, "folders", None)
            where = folders[k] if folders else f"seed {k} made by the fitness plug-in"
            raise EvomergeError(
                f"{where}: the weights hold NaN or Inf values; every merge with this seed would "
                "too: replace it with a finite model"
            )
        k, n = self.gram.num_seeds, self.gram.num_params
        return LineageBatch([Lineage.of_seed(i, k, n) for i in range(k)])

    def size(self, genome: Lineage) -> int:
        return genome.num_params

    def split_slerp(self, a, b, split: int, w: float) -> Lineage:
        return lineage.split_slerp(a, b, split, w, self.gram)

    def slerp(self, a, b, t: float) -> Lineage:
        return lineage.slerp(a, b, t, self.gram)

    def copy(self, genome: Lineage) -> Lineage:
        return genome  # immutable

    def mutate(self, child, std, gen):
        raise ValueError("lineage genomes cannot be mutated: set strategy.mutation_std to 0")

    def pack(self, rows: list) -> LineageBatch:
        return LineageBatch(rows)

    # adaptive mutation: one step per region over its K seed coefficients (still exact)
    def mutation_shape(self, genome: Lineage) -> tuple[int, int]:
        return genome.num_regions, genome.num_seeds

    def add_step(self, genome: Lineage, step: torch.Tensor) -> Lineage:
        return Lineage(genome.bounds, genome.coeffs + step.numpy())

    def to_tensors(self, members: Sequence) -> dict[str, torch.Tensor]:
        out = {}
        for r, m in enumerate(members):
            if m is not None:
                out.update(m.to_tensors(f"lineage.{r}."))
        return out

    def from_tensors(self, tensors: dict[str, torch.Tensor], ids: Sequence[int]) -> tuple:
        return tuple(
            None if i < 0 else Lineage.from_tensors(tensors, f"lineage.{r}.")
            for r, i in enumerate(ids)
        )

    def describe(self, genome: Lineage) -> dict:
        return {
            "space": "lineage",
            "lineage": {"bounds": genome.bounds.tolist(), "coeffs": genome.coeffs.tolist()},
        }

    def summary(self, genome) -> dict:
        return {}


class LineageWorker:
    """Realises lineages over this worker's seeds, in the resident model when there is one."""

    def __init__(self, host, store):
        self.host = host
        self.store = store
        self.loaded = LoadedCandidate()  # what the resident model holds
        self.resident = host.resident()
        # a model that takes candidates as named tensors, one at a time (an inference engine)
        self.stream = host.streamed() if self.resident is None else None
        self.load_seeds = None
        if self.resident is not None or self.stream is not None:  # seeds on the model's
            # device when they fit
            self.load_seeds = on_device(store, host.layout(), host.device, host.seeds_on_device)

    def info(self) -> dict:
        return {}

    def one(self, genome) -> LineageBatch:
        return LineageBatch([genome])

    def batches(self, genomes) -> Sequence[Lineage]:
        """One lineage at a time: a worker holds one candidate's parameters, not a batch."""
        return list(genomes)

    def tensors(self, genome: Lineage, store, device="cpu"):
        """``(name, float32 tensor)`` of each layout entry of ``genome``, made one at a time."""
        offset = 0
        for name, shape in self.host.layout():
            t = torch.empty(math.prod(shape), dtype=torch.float32, device=device)
            load_into(genome, store, [t], start=offset)
            offset += t.numel()
            yield name, t.view(shape)

    def realise(self, genome: Lineage):
        if self.resident is None and self.stream is None:
            row = torch.empty(genome.num_params, dtype=torch.float32)
            load_into(genome, self.store, [row])
            return FlatRows(row[None])
        key = (genome.bounds.tobytes(), genome.coeffs.shape, genome.coeffs.tobytes())
        if self.loaded.holds(key):  # the same lineage again (racing's next stage)
            return Loaded()
        self.loaded.writing()
        if self.stream is not None:
            check_layout(self.host.layout(), genome.num_params, self.host.name)
            self.stream(self.tensors(genome, self.load_seeds, self.host.device))
        else:
            try:
                load_into(genome, self.load_seeds, self.resident)
            except (ValueError, RuntimeError) as exc:
                raise PluginError(
                    f"fitness {self.host.name}: cannot load a lineage into resident_tensors() "
                    f"({str(exc).splitlines()[0]}); they must be param_layout()'s tensors, in "
                    "order"
                ) from None
        self.loaded.written(key)
        return Loaded()

    def export(self, genome: Lineage, out, dtype: str, doc: dict) -> dict:
        layout = self.host.layout()
        check_layout(layout, genome.num_params, self.host.name)

        doc = {**doc, **LineageSpace(None).describe(genome)}
        count = write_model_folder(
            out,
            layout,
            (t.reshape(-1) for _, t in self.tensors(genome, self.store)),
            dtype,
            self.host.export_info().get("files", []),
            {"recipe.yaml": yaml.safe_dump(doc, sort_keys=False)},
        )
        return {"tensors": count, "space": "lineage"}
