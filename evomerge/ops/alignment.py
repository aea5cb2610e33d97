"""Permutation alignment by weight matching: reorder a model's hidden units to match another's.

Two networks trained from different initialisations can compute the same function with their
hidden units in different orders; a merge of them unaligned averages unrelated units. Weight
matching (Ainsworth et al. 2023, Git Re-Basin, arXiv:2209.04836, Algorithm 1 and the authors'
code ``weight_matching``; the method whose linear mode connectivity Ito et al. 2024,
arXiv:2402.04051, analyse) finds, for every permutable axis, the permutation ``P`` maximising
``sum_l <W_l^ref, P_l W_l P_{l-1}^T>``: coordinate ascent, one linear assignment per
permutation with the others fixed (``scipy.optimize.linear_sum_assignment``), in a seeded
random order, until a whole sweep improves none of them.

A :class:`PermutationSpec` says which tensor axes each permutation acts on (``{perm: {tensor:
axis}}``): for the digits MLP, stored ``x @ W``, the hidden units are axis 1 of
``layers.0.weight``, axis 0 of ``layers.0.bias`` and axis 0 of ``layers.1.weight``. A
permutation is a long tensor ``p`` with ``aligned = other.index_select(axis, p)``: the aligned
model's unit ``i`` is the other model's unit ``p[i]``, matched to the reference's unit ``i``.
Aligning changes the model's parameters, never its function (every axis a permutation touches
must be given, so inputs and outputs of a hidden unit move together).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator


class Alignment(BaseModel):
    """``align:`` — permute every input to match one of them before the method merges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: int = Field(
        0,
        ge=0,
        description="Index in models of the model the others (and the base) are matched to.",
    )
    permutations: dict[str, dict[str, int]] = Field(
        description="Per permutation (a name of yours), the tensors it permutes and the axis of "
        "each: {hidden: {layers.0.weight: 1, layers.0.bias: 0, layers.1.weight: 0}}."
    )
    max_iter: int = Field(100, ge=1, description="Sweeps of weight matching at most.")
    seed: int = Field(0, description="Seed of the order permutations are updated in.")

    @field_validator("permutations")
    @classmethod
    def _spec(cls, v):
        PermutationSpec(v)  # ValueError names the problem
        return v

    def spec(self) -> PermutationSpec:
        return PermutationSpec(self.permutations)


class PermutationSpec:
    """Which axis of which tensor each named permutation acts on."""

    def __init__(self, groups: Mapping[str, Mapping[str, int]]):
        if not groups:
            raise ValueError("no permutations given")
        self.groups = {p: dict(axes) for p, axes in groups.items()}
        self.axes: dict[str, dict[int, str]] = {}  # tensor -> {axis: perm}
        for perm, axes in self.groups.items():
            if not axes:
                raise ValueError(f"permutation '{perm}' acts on no tensor")
            for name, axis in axes.items():
                if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
                    raise ValueError(f"{perm}.{name}: the axis is an integer >= 0, not {axis!r}")
                taken = self.axes.setdefault(name, {})
                if axis in taken:
                    raise ValueError(
                        f"{perm}.{name}: axis {axis} is already permuted by '{taken[axis]}'"
                    )
                taken[axis] = perm

    def sizes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Each permutation's size, checking that its tensors exist and agree on it."""
        out: dict[str, int] = {}
        for perm, axes in self.groups.items():
            for name, axis in axes.items():
                if name not in shapes:
                    raise ValueError(f"{perm}: the model has no tensor '{name}'")
                shape = tuple(shapes[name])
                if axis >= len(shape):
                    raise ValueError(f"{perm}.{name}: axis {axis} of a tensor of shape {shape}")
                size = out.setdefault(perm, shape[axis])
                if shape[axis] != size:
                    raise ValueError(
                        f"{perm}.{name}: axis {axis} has {shape[axis]} entries, another tensor "
                        f"of '{perm}' has {size}"
                    )
        return out

    def permute(
        self, name: str, tensor: torch.Tensor, perms: Mapping[str, torch.Tensor], skip=None
    ):
        """``tensor`` (named ``name``) with every permuted axis but ``skip`` reordered."""
        for axis, perm in self.axes.get(name, {}).items():
            if axis != skip:
                tensor = tensor.index_select(axis, perms[perm].to(tensor.device))
        return tensor


def weight_matching(
    reference: Mapping[str, torch.Tensor],
    other: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    max_iter: int = 100,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The permutations that align ``other`` to ``reference`` (Git Re-Basin's Algorithm 1).

    Both map tensor names to tensors (only the spec's tensors are read). Computed in float64.
    """
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize is slow to import

    shapes = {n: tuple(t.shape) for n, t in reference.items() if n in spec.axes}
    sizes = spec.sizes(shapes)
    for name, shape in shapes.items():
        if name not in other or tuple(other[name].shape) != shape:
            got = tuple(other[name].shape) if name in other else "nothing"
            raise ValueError(f"tensor '{name}': the reference has shape {shape}, the other {got}")
    ref = {n: reference[n].detach().to(torch.float64) for n in shapes}
    oth = {n: other[n].detach().to(torch.float64) for n in shapes}
    perms = {p: torch.arange(n) for p, n in sizes.items()}
    names = list(spec.groups)
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        progress = False
        for i in rng.permutation(len(names)):
            perm = names[i]
            n = sizes[perm]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in spec.groups[perm].items():
                a = ref[name].movedim(axis, 0).reshape(n, -1)
                b = spec.permute(name, oth[name], perms, skip=axis).movedim(axis, 0).reshape(n, -1)
                cost += a @ b.T
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.from_numpy(cols).long()
            before = cost[torch.arange(n), perms[perm]].sum().item()
            after = cost[torch.arange(n), new].sum().item()
            progress = progress or after > before + 1e-12 * max(1.0, abs(before))
            perms[perm] = new
        if not progress:
            break
    return perms


def align(
    reference: Mapping[str, torch.Tensor],
    other: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    max_iter: int = 100,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``other`` with its permuted axes reordered to match ``reference`` (every tensor kept)."""
    perms = weight_matching(reference, other, spec, max_iter, seed)
    return {n: spec.permute(n, t, perms) for n, t in other.items()}
