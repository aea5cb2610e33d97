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

A permutation may move *blocks* rather than single entries (``units``: an attention head is a
unit of ``head_dim`` rows of ``q_proj``): with ``n`` units, an axis of ``n * b`` entries is read
as ``n`` consecutive blocks of ``b``, and each tensor of the permutation may have its own ``b``
(grouped-query attention: a key/value head's ``head_dim`` rows of ``k_proj`` move with its
group's ``g * head_dim`` rows of ``q_proj``). :mod:`evomerge.ops.transformer_alignment` builds
such specs for transformer blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Alignment(BaseModel):
    """``align:`` — permute every input to match one of them before the method merges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: int = Field(
        0,
        ge=0,
        description="Index in models of the model the others (and the base) are matched to.",
    )
    permutations: dict[str, dict[str, int]] | None = Field(
        None,
        description="Per permutation (a name of yours), the tensors it permutes and the axis of "
        "each: {hidden: {layers.0.weight: 1, layers.0.bias: 0, layers.1.weight: 0}}.",
    )
    units: dict[str, int] = Field(
        {},
        description="Per permutation that moves blocks (attention heads), its number of units; "
        "each of its axes is read as that many consecutive equal blocks.",
    )
    architecture: Literal["llama"] | None = Field(
        None,
        description="Build the permutations of a transformer from the reference's config.json "
        "instead of listing them: llama (Llama/Mistral/Qwen2-shaped: MLP hidden units and "
        "attention heads of every block).",
    )
    residual: bool = Field(
        False,
        description="With architecture: also permute the residual stream (embeddings, every "
        "block's inputs and outputs, the norms' weights, the output head).",
    )
    max_iter: int = Field(100, ge=1, description="Sweeps of weight matching at most.")
    seed: int = Field(0, description="Seed of the order permutations are updated in.")

    @model_validator(mode="after")
    def _spec(self):
        if (self.permutations is None) == (self.architecture is None):
            raise ValueError("give either permutations or architecture (not both)")
        if self.residual and self.architecture is None:
            raise ValueError("residual: true needs architecture (list its axes in permutations)")
        if self.permutations is not None:
            PermutationSpec(self.permutations, self.units)  # ValueError names the problem
        elif self.units:
            raise ValueError("units: architecture sets them itself")
        return self

    def spec(self, config: Mapping | None = None, names=None) -> PermutationSpec:
        """The spec: as listed, or built for ``architecture`` from the reference's
        ``config.json`` (``config``) and its tensor names (``names``)."""
        if self.permutations is not None:
            return PermutationSpec(self.permutations, self.units)
        from evomerge.ops.transformer_alignment import llama_spec

        return llama_spec(config or {}, names or (), residual=self.residual)


class PermutationSpec:
    """Which axis of which tensor each named permutation acts on."""

    def __init__(
        self, groups: Mapping[str, Mapping[str, int]], units: Mapping[str, int] | None = None
    ):
        if not groups:
            raise ValueError("no permutations given")
        self.groups = {p: dict(axes) for p, axes in groups.items()}
        self.units = dict(units or {})
        for perm, n in self.units.items():
            if perm not in self.groups:
                raise ValueError(f"units.{perm}: no permutation '{perm}'")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"units.{perm}: the number of units is an integer >= 1, not {n!r}")
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
                if perm in self.units:
                    n = self.units[perm]
                    if shape[axis] % n:
                        raise ValueError(
                            f"{perm}.{name}: axis {axis} has {shape[axis]} entries, not a "
                            f"multiple of its {n} units"
                        )
                    out[perm] = n
                    continue
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
                tensor = tensor.index_select(
                    axis, axis_order(perms[perm], tensor.shape[axis]).to(tensor.device)
                )
        return tensor


def axis_order(p: torch.Tensor, length: int) -> torch.Tensor:
    """A permutation of ``len(p)`` units as one of ``length`` entries (blocks kept whole)."""
    block = length // len(p)
    if block == 1:
        return p
    return (p[:, None] * block + torch.arange(block)).reshape(-1)


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
