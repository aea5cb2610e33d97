"""Layer naming: which tensors make layer ``i``, and the tensors of a stack of layers.

One module owns it for everything that builds stacked models (mergekit ``slices`` merges in
:mod:`evomerge.merge.slices`, the data-flow export in :mod:`evomerge.tensors.layer_stack`): a
tensor belongs to layer ``i`` when the first group of a layer pattern matches ``i`` in its
name; moving it to layer ``j`` rewrites that group; output layer ``j`` of a stack is input layer
``l`` of a model, each of its tensors renamed to ``j``; the stacked ``config.json`` gets the new
layer count and its per-layer lists rebuilt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: The layer index of a tensor name, for the usual architectures (Llama ``layers``, GPT-2
#: ``h``, ``blocks``, ...): what recipes, ``slices`` merges and layer parameters use.
LAYER_PATTERN = r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)"
#: Decoder layers only (``...layers.<i>.<rest>``): what the data-flow export stacks, so a
#: multimodal model's other blocks (a vision tower's ``blocks.<i>``) stay with the base.
DECODER_LAYER_PATTERN = r"(?:^|\.)layers\.(\d+)\.(?=.)"
#: ``config.json`` entries that hold one value per layer.
PER_LAYER_KEYS = ("layer_types",)


class LayerMismatch(ValueError):
    """The layers stacked into one output layer hold different tensors."""


def layer_of(name: str, pattern: str = LAYER_PATTERN) -> int | None:
    """The layer index of tensor ``name`` (None: outside the layers)."""
    m = re.search(pattern, name)
    return int(m.group(1)) if m else None


def rename_layer(name: str, layer: int, pattern: str = LAYER_PATTERN) -> str:
    """``name`` with its layer index replaced by ``layer``."""
    m = re.search(pattern, name)
    if m is None:
        raise ValueError(f"tensor '{name}' has no layer index")
    return name[: m.start(1)] + str(layer) + name[m.end(1) :]


def after_layer(name: str, pattern: str = LAYER_PATTERN) -> str | None:
    """What follows the layer index in ``name`` (``.self_attn.o_proj.weight``), or None."""
    m = re.search(pattern, name)
    return None if m is None else name[m.end(1) :]


def num_layers(names: Sequence[str], pattern: str = LAYER_PATTERN) -> int:
    """One more than the highest layer index among ``names`` (0: no layers)."""
    found = [x for x in (layer_of(n, pattern) for n in names) if x is not None]
    return max(found) + 1 if found else 0


def by_layer(names: Sequence[str], pattern: str = LAYER_PATTERN) -> dict[int, list[str]]:
    """Layer index -> the names of its tensors, in the order of ``names``."""
    out: dict[int, list[str]] = {}
    for n in names:
        layer = layer_of(n, pattern)
        if layer is not None:
            out.setdefault(layer, []).append(n)
    return out


def stack_layer(
    layers: Mapping[int, Mapping[int, Sequence[str]]],
    sources: Sequence[tuple[int, int]],
    index: int,
    pattern: str = LAYER_PATTERN,
) -> list[tuple[str, tuple[tuple[int, str], ...]]]:
    """Output layer ``index`` made of layer ``l`` of model ``m`` for each ``(m, l)`` of
    ``sources`` (one: a copy; several: to be merged): each of its tensors' output name and
    ``(model, input name)`` per source, in the first source's order.

    ``layers[m]`` is model ``m``'s :func:`by_layer`. Raises :class:`LayerMismatch` when the
    sources' layers hold different tensors.
    """
    keyed = [{rename_layer(n, 0, pattern): n for n in layers[m][layer]} for m, layer in sources]
    if any(set(kd) != set(keyed[0]) for kd in keyed[1:]):
        raise LayerMismatch(f"layers {list(sources)} hold different tensors")
    m0, l0 = sources[0]
    out = []
    for n in layers[m0][l0]:
        suffix = rename_layer(n, 0, pattern)
        srcs = tuple((m, kd[suffix]) for (m, _), kd in zip(sources, keyed, strict=True))
        out.append((rename_layer(n, index, pattern), srcs))
    return out


def with_num_layers(config: dict, count: int, layer_map: Sequence[int] | None = None) -> dict:
    """A copy of a Hugging Face ``config.json`` mapping with ``count`` layers.

    ``num_hidden_layers`` (or ``n_layer``, GPT-2's name, when the config has only that) is set;
    each per-layer list (:data:`PER_LAYER_KEYS`) is rebuilt from ``layer_map`` (output layer ->
    input layer of the config's model) when given.
    """
    out = dict(config)
    key = "n_layer" if "n_layer" in out and "num_hidden_layers" not in out else "num_hidden_layers"
    out[key] = count
    for name in PER_LAYER_KEYS:
        values = out.get(name)
        if isinstance(values, list) and values and layer_map is not None:
            out[name] = [values[i] if 0 <= i < len(values) else values[-1] for i in layer_map]
    return out
