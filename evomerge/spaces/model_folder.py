"""A candidate's named tensors written as a model folder other tools load.

Sharded safetensors with an index, the plug-in's extra files (``config.json``, tokenizer) and
text files (``recipe.yaml``, ``mergekit.yaml``); the folder appears only when complete
(:class:`~evomerge.tensors.sharded_writer.ShardedWriter`). Tensors are written as they come,
so a space that merges tensor by tensor never holds the whole model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.tensors.dtypes import DTYPES
from evomerge.tensors.safetensors_io import ShardedWriter

SHARD_BYTES = 5 * 10**9  # as transformers' save_pretrained: 5GB shards


def check_layout(layout: Sequence[tuple[str, Sequence[int]]], size: int, plugin: str) -> None:
    """The plug-in's layout must cover exactly the member's ``size`` parameters."""
    covered = sum(math.prod(s) for _, s in layout)
    if covered != size:
        raise EvomergeError(
            f"fitness {plugin}: param_layout() covers {covered} parameters, the member has {size}"
        )


def write_model_folder(
    out: str | Path,
    layout: Sequence[tuple[str, Sequence[int]]],
    tensors: Iterator[torch.Tensor],
    dtype: str,
    files: Sequence[str | Path] = (),
    texts: dict[str, str] | None = None,
) -> int:
    """Write ``tensors`` (one per ``layout`` entry, in order) to ``out``; returns the count."""
    plan = [(name, tuple(shape), DTYPES[dtype]) for name, shape in layout]
    with ShardedWriter(out, plan, max_shard_bytes=SHARD_BYTES) as writer:
        for (name, shape), tensor in zip(layout, tensors, strict=True):
            writer.write(name, tensor.reshape(tuple(shape)))
        writer.copy_files([Path(p) for p in files])
        for fname, text in (texts or {}).items():
            writer.write_text(fname, text)
        writer.commit()
    return len(layout)
