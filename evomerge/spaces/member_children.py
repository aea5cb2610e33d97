"""Dense children sent as what they are made of: two archive members, a split, a weight and
a random key, instead of their whole parameter vectors.

A child of a dense archive is a pure function of its parents' genomes and a few numbers, so a
worker that keeps a replica of the archive's members rebuilds it from a recipe of a few dozen
bytes; the driver ships a member's genome to a worker once, the first time that worker needs
it, instead of 19,210 floats (digits) per child. The driver builds a child itself only when
it needs the vector (a child the archive keeps). Both sides build with :func:`build_child`,
from the same numbers, with the same operations: the rows are bit-identical wherever they are
made (the parents' angle, a float64 sum whose rounding may depend on the thread count, is
computed once on the driver and travels in the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from evomerge.core.keys import child_generator
from evomerge.ops import vectors


@dataclass(frozen=True)
class ChildRecipe:
    """One child of a variation search (:class:`~evomerge.search.variation.VariationSearch`).

    ``crossover``: ``split`` (split-point SLERP), ``slerp`` (whole vectors at ``w``) or
    ``copy`` (parent A). ``seed``/``index``: the child's random key; its generator first
    draws ``(u_a, u_b, w)`` and the split (:meth:`generator` replays those two draws), then
    the mutation noise.
    """

    a: int
    b: int
    crossover: str
    split: int
    w: float
    angle: tuple[float, float]
    mutation_std: float
    seed: int
    index: int

    def generator(self, size: int, gen: torch.Generator | None = None) -> torch.Generator:
        """The child's generator where the mutation draws from it (after the parent and
        split draws of ``_ask``)."""
        gen = child_generator(self.seed, self.index, gen)
        torch.rand(3, generator=gen, dtype=torch.float64)
        torch.randint(0, size, (1,), generator=gen)
        return gen


def build_child(
    recipe: ChildRecipe, pa: torch.Tensor, pb: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """The child's float32 vector; ``gen`` stands where the mutation draws."""
    if recipe.crossover == "copy":
        child = pa.float().clone()
    else:
        split = recipe.split if recipe.crossover == "split" else len(pa)
        child = vectors.split_slerp(pa, pb, split, recipe.w, recipe.angle)
    if recipe.mutation_std > 0:
        child = vectors.mutate(child, recipe.mutation_std, gen)
    return child


class MemberRows:
    """A batch of children as recipes over member genomes (``members``: id -> vector); rows
    are built on demand, each once."""

    def __init__(self, recipes: tuple[ChildRecipe, ...], members: dict[int, torch.Tensor]):
        self.recipes = recipes
        self.members = members
        self._rows: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.recipes)

    def __getitem__(self, i: int) -> torch.Tensor:
        row = self._rows.get(i)
        if row is None:
            r = self.recipes[i]
            pa, pb = self.members[r.a], self.members[r.b]
            row = self._rows[i] = build_child(r, pa, pb, r.generator(len(pa)))
        return row

    def subset(self, rows) -> MemberRows:
        """The children at positions ``rows``, as recipes still."""
        picked = tuple(self.recipes[i] for i in rows)
        return MemberRows(picked, self.members)

    def materialise(self) -> torch.Tensor:
        """All rows, ``(B, N)``."""
        return torch.stack([self[i] for i in range(len(self))])

    def parents(self) -> set[int]:
        """Ids of the members these children are made from."""
        return {m for r in self.recipes for m in (r.a, r.b)}

    def payload(self, held: set[int]) -> dict:
        """What a worker holding the members ``held`` needs: the recipes, the genomes of the
        parents it lacks, and the members to keep (the others are dropped)."""
        return {
            "recipes": self.recipes,
            "genomes": {m: self.members[m].numpy() for m in self.parents() - held},
            "keep": list(self.members),
        }


class MemberReplica:
    """A worker's copy of the archive members that children are made from."""

    def __init__(self):
        self.members: dict[int, torch.Tensor] = {}

    def missing(self, payload: dict) -> list[int]:
        """Parents this replica neither holds nor receives (a restarted worker)."""
        have = set(self.members) | set(payload["genomes"])
        return sorted({m for r in payload["recipes"] for m in (r.a, r.b)} - have)

    def update(self, payload: dict) -> None:
        """Take the payload's genomes and drop the members no longer kept."""
        for m, genome in payload["genomes"].items():
            self.members[m] = torch.from_numpy(np.array(genome, dtype=np.float32))
        keep = set(payload["keep"])
        for m in [m for m in self.members if m not in keep]:
            del self.members[m]

    def rows(self, payload: dict) -> np.ndarray:
        """The payload's children, ``(B, N)``, built after :meth:`update`."""
        self.update(payload)
        rows = MemberRows(tuple(payload["recipes"]), self.members)
        return rows.materialise().numpy()
