"""One state codec: a strategy's frozen state dataclass <-> safetensors tensors + JSON meta.

A checkpoint *is* the state, so every strategy encodes it the same way: each dataclass field
says where it goes. By default (from the field's type) a ``torch.Tensor`` is a tensor named
after the field, an ``int``/``float``/``str``/``bool`` a meta key named after the field; other
fields name their codec in ``field(metadata=codec(...))``:

* :class:`IntTuple` ``(3, -1, 7)`` -> an int64 tensor (archive ids);
* :class:`Nested` another state dataclass under a prefix (``best`` -> ``best_genes``,
  ``best_scores`` tensors and a ``best_id`` meta key), optional when ``None`` is allowed;
* :class:`Stacked` a tuple of same-shaped tensors (one per generation) as one tensor plus a
  count in meta;
* :class:`Custom` anything else, given the strategy's codec context (e.g. its genome space).

The names are the checkpoint format: run directories written earlier must keep loading, so a
field's stored name never changes (rename the field, keep ``key=``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch

CODEC = "evomerge.codec"  # the dataclass field metadata key


def codec(spec: FieldCodec) -> dict:
    """``field(metadata=codec(spec))``: store this field with ``spec``."""
    return {CODEC: spec}


class FieldCodec:
    """How one field is written into ``(tensors, meta)`` and read back."""

    deferred = False  # decoded after the other fields (it needs them: see Custom)

    def encode(self, name: str, value, state, tensors: dict, meta: dict, context: dict) -> None:
        raise NotImplementedError

    def decode(self, name: str, tensors: dict, meta: dict, context: dict, decoded: dict):
        raise NotImplementedError


@dataclass(frozen=True)
class Tensor(FieldCodec):
    """A tensor under ``key`` (the field's name by default); a copy is read back."""

    key: str | None = None

    def encode(self, name, value, state, tensors, meta, context):
        tensors[self.key or name] = value

    def decode(self, name, tensors, meta, context, decoded):
        return tensors[self.key or name].clone()


@dataclass(frozen=True)
class Meta(FieldCodec):
    """A JSON scalar under ``key`` (the field's name by default), cast back by ``cast``."""

    cast: Callable = float
    key: str | None = None

    def encode(self, name, value, state, tensors, meta, context):
        meta[self.key or name] = value

    def decode(self, name, tensors, meta, context, decoded):
        return self.cast(meta[self.key or name])


@dataclass(frozen=True)
class IntTuple(FieldCodec):
    """A tuple of ints as an int64 tensor."""

    def encode(self, name, value, state, tensors, meta, context):
        tensors[name] = torch.tensor(value, dtype=torch.int64)

    def decode(self, name, tensors, meta, context, decoded):
        return tuple(int(i) for i in tensors[name])


@dataclass(frozen=True)
class Nested(FieldCodec):
    """A nested state dataclass; its tensors are named ``tensor_prefix + name``.

    Its meta keys are ``meta_prefix + name`` in the outer meta, or, with ``meta_key``, one
    mapping under that key. ``optional``: the field may be ``None`` and is then absent (read
    back as ``None`` when ``meta_key`` is missing).
    """

    cls: type
    tensor_prefix: str
    meta_prefix: str = ""
    meta_key: str | None = None
    optional: bool = False

    def encode(self, name, value, state, tensors, meta, context):
        if value is None:
            if not self.optional:
                raise ValueError(f"state field '{name}' is None but not optional")
            return
        inner_t, inner_m = encode(value, context)
        tensors.update({self.tensor_prefix + k: v for k, v in inner_t.items()})
        if self.meta_key is not None:
            meta[self.meta_key] = inner_m
        else:
            meta.update({self.meta_prefix + k: v for k, v in inner_m.items()})

    def decode(self, name, tensors, meta, context, decoded):
        if self.meta_key is not None:
            if self.meta_key not in meta and self.optional:
                return None
            inner_m = meta[self.meta_key]
        else:
            n = len(self.meta_prefix)
            inner_m = {k[n:]: v for k, v in meta.items() if k.startswith(self.meta_prefix)}
        n = len(self.tensor_prefix)
        inner_t = {k[n:]: v for k, v in tensors.items() if k.startswith(self.tensor_prefix)}
        return decode(self.cls, inner_t, inner_m, context)


@dataclass(frozen=True)
class Stacked(FieldCodec):
    """A tuple of same-shaped tensors (one per generation), concatenated along dim 0, with
    their number in meta ``count_key``; ``empty(state)`` is the tensor stored for none."""

    count_key: str
    empty: Callable

    def encode(self, name, value, state, tensors, meta, context):
        tensors[name] = torch.cat(value) if value else self.empty(state)
        meta[self.count_key] = len(value)

    def decode(self, name, tensors, meta, context, decoded):
        count = int(meta[self.count_key])
        stacked = tensors[name]
        size = stacked.shape[0] // count if count else 0
        return tuple(stacked[i * size : (i + 1) * size].clone() for i in range(count))


@dataclass(frozen=True)
class Custom(FieldCodec):
    """A field written by ``write(value, context) -> tensors`` and read by
    ``read(tensors, context, decoded) -> value``, after the other fields (``decoded``)."""

    write: Callable
    read: Callable
    deferred = True

    def encode(self, name, value, state, tensors, meta, context):
        tensors.update(self.write(value, context))

    def decode(self, name, tensors, meta, context, decoded):
        return self.read(tensors, context, decoded)


_SCALARS = {int: int, float: float, str: str, bool: bool}


def _field_codecs(cls: type) -> list[tuple[str, FieldCodec]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(CODEC)
        if spec is None:
            kind = hints[f.name]
            if kind is torch.Tensor:
                spec = Tensor()
            elif kind in _SCALARS:
                spec = Meta(_SCALARS[kind])
            else:
                raise TypeError(
                    f"{cls.__name__}.{f.name}: give its checkpoint codec with "
                    "field(metadata=codec(...))"
                )
        out.append((f.name, spec))
    return out


def encode(state, context: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of a state dataclass: what a checkpoint stores."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    for name, spec in _field_codecs(type(state)):
        spec.encode(name, getattr(state, name), state, tensors, meta, context or {})
    return tensors, meta


def decode(cls: type, tensors: dict[str, torch.Tensor], meta: dict, context: dict | None = None):
    """The state of type ``cls`` that :func:`encode` wrote (extra entries are ignored)."""
    context = context or {}
    specs = _field_codecs(cls)
    decoded: dict = {}
    for deferred in (False, True):
        for name, spec in specs:
            if spec.deferred == deferred:
                decoded[name] = spec.decode(name, tensors, meta, context, decoded)
    return cls(**decoded)
