"""Layer stacking plans: which output tensor comes from which input tensors, as mergekit's
``slices`` say.

A slice takes the same layer range ``[start, end)`` from each of its sources (one source for
``passthrough``: the layers are copied; several: they are merged layer by layer). Slices are
stacked in order, so output layer ``j`` of slice ``s`` is layer ``start + j`` of each source of
``s``, renumbered to its place in the stack. Tensors outside the layers come, as in mergekit,
from the first slice's sources when they precede the layers (embeddings) and from the last
slice's sources otherwise (final norm, output head). Each planned tensor carries mergekit's
gradient position ``t``: ``j / (len - 1)`` within its slice (1 for a one-layer slice), 0
outside the layers.

Pure functions over names. Layer naming (which tensors make a layer, renaming one to another
layer, the stacked config's layer count) is :mod:`evomerge.tensors.layer_names`, shared with
the data-flow export; its :func:`rename_layer` and :func:`with_num_layers` are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evomerge.spaces.recipe import DEFAULT_KINDS
from evomerge.tensors.layer_names import (  # noqa: F401  (rename_layer, with_num_layers: this module's API)
    LAYER_PATTERN,
    LayerMismatch,
    by_layer,
    layer_of,
    num_layers,
    rename_layer,
    stack_layer,
    with_num_layers,
)

#: Tensors outside the layers whose name matches this precede them (taken from the first slice).
PRE_PATTERN = DEFAULT_KINDS["embedding"]


@dataclass(frozen=True)
class SliceRange:
    """Layers ``start .. end - 1`` of model ``model`` (an index into the caller's model list)."""

    model: int
    start: int
    end: int


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its name, ``(model, input name)`` per source, gradient position ``t``,
    and the slice it belongs to (the first or last slice for tensors outside the layers)."""

    name: str
    sources: tuple[tuple[int, str], ...]
    t: float
    slice: int


def plan_tensors(
    names: Mapping[int, Sequence[str]],
    slices: Sequence[Sequence[SliceRange]],
    pattern: str = LAYER_PATTERN,
) -> list[PlannedTensor]:
    """The output tensors of stacking ``slices`` over models whose tensor names are ``names``.

    ``names[m]`` lists model ``m``'s tensors. Raises ValueError (one line) for an empty slice,
    sources of different lengths, a range outside a model's layers, or layers whose tensor
    names differ between sources.
    """
    if not slices:
        raise ValueError("slices: give at least one slice")
    layers = {m: by_layer(ns, pattern) for m, ns in names.items()}
    plan: list[PlannedTensor] = []
    out_layer = 0
    for s, sources in enumerate(slices):
        if not sources:
            raise ValueError(f"slices[{s}]: no sources")
        lengths = {r.end - r.start for r in sources}
        if len(lengths) != 1 or min(lengths) <= 0:
            raise ValueError(
                f"slices[{s}]: every source needs the same non-empty layer_range length "
                f"(got {sorted(r.end - r.start for r in sources)})"
            )
        length = lengths.pop()
        for r in sources:
            have = len(layers[r.model])
            if r.start < 0 or r.end > have:
                raise ValueError(
                    f"slices[{s}]: layer_range [{r.start}, {r.end}] is outside model {r.model}'s "
                    f"{have} layers"
                )
        for j in range(length):
            t = j / (length - 1) if length > 1 else 1.0
            try:
                tensors = stack_layer(
                    layers, [(r.model, r.start + j) for r in sources], out_layer, pattern
                )
            except LayerMismatch:
                raise ValueError(
                    f"slices[{s}]: layer {sources[0].start + j} of model {sources[0].model} and "
                    "the matching layers of the other sources hold different tensors"
                ) from None
            plan += [PlannedTensor(name, srcs, t, s) for name, srcs in tensors]
            out_layer += 1
    outside = [n for n in names[slices[0][0].model] if layer_of(n, pattern) is None]
    pre = [n for n in outside if re.search(PRE_PATTERN, n)]
    post = [n for n in outside if not re.search(PRE_PATTERN, n)]
    last = len(slices) - 1
    head = [PlannedTensor(n, tuple((r.model, n) for r in slices[0]), 0.0, 0) for n in pre]
    tail = [PlannedTensor(n, tuple((r.model, n) for r in slices[-1]), 0.0, last) for n in post]
    return head + plan + tail


def whole_model_plan(names: Sequence[str], models: int, pattern=LAYER_PATTERN):
    """The plan of an ordinary merge: every tensor from every model under its own name."""
    total = num_layers(names, pattern)
    plan = []
    for n in names:
        layer = layer_of(n, pattern)
        t = 0.0 if layer is None else (layer / (total - 1) if total > 1 else 1.0)
        plan.append(PlannedTensor(n, tuple((m, n) for m in range(models)), t, 0))
    return plan
