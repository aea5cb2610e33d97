"""Variation and storage of genomes that are flat float32 vectors.

Dense parameter vectors, merge-recipe genes and layer-stack genes all vary the same way:
split-point SLERP over the whole vector, Gaussian or CMA-adaptive mutation, one row per member
in a checkpoint. The spaces built on vectors differ in what a vector stands for (how it is
seeded, realised on a worker, described and exported), not in how it varies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.ops import vectors
from evomerge.spaces.dot_memo import DotMemo


class VectorGenomes:
    """Genomes are explicit float32 vectors; ``name`` is the checkpoint's ``space``."""

    name = "dense"

    def size(self, genome: torch.Tensor) -> int:
        return len(genome)

    def split_slerp(self, a, b, split: int, w: float):
        return vectors.split_slerp(a, b, split, w, self.parent_angle(a, b))

    def parent_angle(self, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        """:func:`~evomerge.ops.vectors.parent_angle`, its dot products remembered per pair
        of live members (:class:`~evomerge.spaces.dot_memo.DotMemo`)."""
        memo = self.__dict__.get("_dots")
        if memo is None:
            memo = self.__dict__["_dots"] = DotMemo()
        aa = memo.value(a, a, lambda x, _: vectors.self_dot(x))
        bb = memo.value(b, b, lambda x, _: vectors.self_dot(x))
        return vectors.angle_from_dots(aa, bb, memo.value(a, b, vectors.cross_dot))

    def slerp(self, a, b, t: float):
        return vectors.slerp(a, b, t)

    def copy(self, genome: torch.Tensor) -> torch.Tensor:
        # Each member owns its memory: BLAS results can depend on a vector's alignment,
        # so a member must look the same whether it came from a batch or a checkpoint.
        return genome.float().clone()

    def mutate(self, child: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
        return vectors.mutate(child, std, gen)

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

    def summary(self, genome) -> dict:
        """Extra ``summary.json`` entries about the best member (none for plain vectors)."""
        return {}
