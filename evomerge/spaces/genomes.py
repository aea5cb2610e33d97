"""Genome spaces for M2N2 and GA: how children are made from parents, batched and stored.

``DenseSpace``: a genome is a flat float32 parameter vector (models evolved from scratch,
small merges). ``LineageSpace``: a genome is a :class:`~evomerge.spaces.lineage.Lineage`, the
exact recipe of a child over the seeds, a few KB whatever the model's size; workers that hold
the seeds materialise it (:class:`LineageBatch` is what travels to them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from evomerge.ops import vectors as dense
from evomerge.spaces import lineage
from evomerge.spaces.lineage import Lineage, SeedGram


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


class DenseSpace:
    """Genomes are explicit float32 vectors."""

    name = "dense"

    def size(self, genome: torch.Tensor) -> int:
        return len(genome)

    def split_slerp(self, a, b, split: int, w: float):
        return dense.split_slerp(a, b, split, w)

    def slerp(self, a, b, t: float):
        return dense.slerp(a, b, t)

    def copy(self, genome: torch.Tensor) -> torch.Tensor:
        # Each member owns its memory: BLAS results can depend on a vector's alignment,
        # so a member must look the same whether it came from a batch or a checkpoint.
        return genome.float().clone()

    def mutate(self, child: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
        return dense.mutate(child, std, gen)

    def pack(self, rows: list) -> torch.Tensor:
        return torch.stack(rows)

    # adaptive mutation: one step over the whole vector
    def mutation_shape(self, genome: torch.Tensor) -> tuple[int, int]:
        """``(rows, dim)`` of the steps an adaptive mutation adds to ``genome``."""
        return 1, len(genome)

    def add_step(self, genome: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return (genome.double() + step[0]).to(torch.float32)

    def to_tensors(self, members: Sequence) -> dict[str, torch.Tensor]:
        n = next(p.numel() for p in members if p is not None)
        return {"params": torch.stack([torch.zeros(n) if p is None else p for p in members])}

    def from_tensors(self, tensors: dict[str, torch.Tensor], ids: Sequence[int]) -> tuple:
        return tuple(None if i < 0 else tensors["params"][r].clone() for r, i in enumerate(ids))


class LineageSpace:
    """Genomes are lineages over ``K`` seeds; SLERP angles come from the seeds' Gram."""

    name = "lineage"

    def __init__(self, gram: SeedGram):
        self.gram = gram

    @classmethod
    def from_seeds(cls, seeds: torch.Tensor) -> LineageSpace:
        """The space over seeds held as a ``(K, N)`` tensor."""
        k, n = seeds.shape
        return cls(SeedGram(lineage.dense_reader(seeds), n, k))

    @classmethod
    def from_store(cls, store) -> LineageSpace:
        """The space over a :mod:`~evomerge.tensors.seed_store` store (in memory or mapped)."""
        return cls(SeedGram(store.read, store.num_params, store.num_seeds))

    def seed_genomes(self) -> LineageBatch:
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


def materialize_batch(batch: LineageBatch, store) -> np.ndarray:
    """``(B, N)`` float32 parameters of a batch of lineages over a seed store."""
    return np.stack([m.materialize(store.read).numpy() for m in batch])
