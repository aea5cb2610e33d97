"""A stacked model (data-flow space) written as a normal model folder, tensor by tensor.

Slot ``j`` of the stack is layer ``l`` of seed ``k``: its tensors ``...layers.<l>.<rest>`` of
seed ``k`` become ``...layers.<j>.<rest>``, with the residual-update projections (attention
output, MLP down projection: weight and bias) multiplied by the slot's scale, which is exactly
the stacked model's forward pass. Everything outside the layers (embeddings, final norm, head)
comes from the base seed. ``config.json`` is the base's with ``num_hidden_layers`` (and any
per-layer list such as ``layer_types``) made to fit, so ``AutoModelForCausalLM`` loads it.
Peak memory: one tensor; the folder appears only when complete (:class:`ShardedWriter`).
Which tensors make a layer, their renaming and the config's layer count are
:mod:`evomerge.tensors.layer_names`' (as for ``slices`` merges), on decoder layers only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.tensors.layer_names import (  # noqa: F401  (PER_LAYER_KEYS: fitness/dataflow_lm.py's)
    DECODER_LAYER_PATTERN,
    PER_LAYER_KEYS,
    after_layer,
    by_layer,
    layer_of,
    stack_layer,
    with_num_layers,
)
from evomerge.tensors.model_ref import open_model
from evomerge.tensors.safetensors_io import ShardedWriter

#: Tensors (by the part of the name after the layer index) a slot's scale multiplies.
SCALED = (".self_attn.o_proj.", ".mlp.down_proj.")


def is_scaled(rest: str) -> bool:
    return any(rest.startswith(s) for s in SCALED)


def stacked_config(base_config: dict, slots: Sequence, dtype: torch.dtype | None = None) -> dict:
    """``config.json`` of the stack: the base's, with the layer count and per-layer lists fit
    (and the dtype the tensors are written in)."""
    config = with_num_layers(base_config, len(slots), [s.layer for s in slots])
    if dtype is not None:
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = str(dtype).removeprefix("torch.")
    return config


def write_stacked(
    seed_folders: Sequence[str | Path],
    base: int,
    slots: Sequence,
    out: str | Path,
    dtype: torch.dtype,
    texts: dict[str, str] | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> int:
    """Write the stack ``slots`` over ``seed_folders`` to ``out``; returns the tensor count."""
    seeds = [open_model(p) for p in seed_folders]
    try:
        base_seed = seeds[base]
        config_path = base_seed.path / "config.json"
        if not config_path.is_file():
            raise EvomergeError(f"{seed_folders[base]}: no config.json to base the export on")
        base_config = json.loads(config_path.read_text(encoding="utf-8"))
        pattern = DECODER_LAYER_PATTERN
        layers = {}  # seed -> its layers' tensors, read once
        for s in slots:
            if s.seed not in layers:
                layers[s.seed] = by_layer(seeds[s.seed].names(), pattern)
            if not layers[s.seed].get(s.layer):
                raise EvomergeError(
                    f"{seed_folders[s.seed]}: no tensors of layer {s.layer} "
                    "(names like model.layers.<i>.*)"
                )
        jobs = []  # (out name, seed, source name, scale)
        for name in base_seed.names():
            if layer_of(name, pattern) is None:
                jobs.append((name, base_seed, name, 1.0))
        for j, s in enumerate(slots):
            for name, ((_, src),) in stack_layer(layers, [(s.seed, s.layer)], j, pattern):
                scale = s.scale if is_scaled(after_layer(src, pattern)) else 1.0
                jobs.append((name, seeds[s.seed], src, scale))
        plan = [(name, seed.shape(src), dtype) for name, seed, src, _ in jobs]
        with ShardedWriter(out, plan, max_shard_bytes=max_shard_bytes) as writer:
            for name, seed, src, scale in jobs:
                t = seed.get(src, dtype=torch.float32)
                writer.write(name, t if scale == 1.0 else t * scale)
            extra = [p for p in base_seed.extra_files() if p.name != "config.json"]
            writer.copy_files(extra)
            config = stacked_config(base_config, slots, dtype)
            writer.write_text("config.json", json.dumps(config, indent=2) + "\n")
            for fname, text in (texts or {}).items():
                writer.write_text(fname, text)
            writer.commit()
        return len(jobs)
    finally:
        for s in seeds:
            s.close()
