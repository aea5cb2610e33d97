"""A stacked model (data-flow space) written as a normal model folder, tensor by tensor.

Slot ``j`` of the stack is layer ``l`` of seed ``k``: its tensors ``...layers.<l>.<rest>`` of
seed ``k`` become ``...layers.<j>.<rest>``, with the residual-update projections (attention
output, MLP down projection: weight and bias) multiplied by the slot's scale, which is exactly
the stacked model's forward pass. Everything outside the layers (embeddings, final norm, head)
comes from the base seed. ``config.json`` is the base's with ``num_hidden_layers`` (and any
per-layer list such as ``layer_types``) made to fit, so ``AutoModelForCausalLM`` loads it.
Peak memory: one tensor; the folder appears only when complete (:class:`ShardedWriter`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.tensors.safetensors_io import SeedModel, ShardedWriter

LAYER_NAME = re.compile(r"^(.*?(?:^|\.)layers\.)(\d+)(\..+)$")
#: Tensors (by the part of the name after the layer index) a slot's scale multiplies.
SCALED = (".self_attn.o_proj.", ".mlp.down_proj.")
#: config.json entries that hold one value per layer.
PER_LAYER_KEYS = ("layer_types",)


def layer_of(name: str) -> tuple[str, int, str] | None:
    """``(prefix, index, rest)`` of a decoder-layer tensor name, or None."""
    m = LAYER_NAME.match(name)
    return None if m is None else (m.group(1), int(m.group(2)), m.group(3))


def is_scaled(rest: str) -> bool:
    return any(rest.startswith(s) for s in SCALED)


def layer_tensors(seed: SeedModel, layer: int) -> list[tuple[str, str, str]]:
    """``(name, prefix, rest)`` of the tensors of ``layer`` in ``seed``, in file order."""
    out = []
    for name in seed.names():
        parts = layer_of(name)
        if parts is not None and parts[1] == layer:
            out.append((name, parts[0], parts[2]))
    return out


def stacked_config(base_config: dict, slots: Sequence, dtype: torch.dtype | None = None) -> dict:
    """``config.json`` of the stack: the base's, with the layer count and per-layer lists fit
    (and the dtype the tensors are written in)."""
    config = dict(base_config)
    config["num_hidden_layers"] = len(slots)
    if dtype is not None:
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = str(dtype).removeprefix("torch.")
    for key in PER_LAYER_KEYS:
        values = config.get(key)
        if isinstance(values, list) and values:
            config[key] = [values[s.layer % len(values)] for s in slots]
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
    seeds = [SeedModel(p) for p in seed_folders]
    try:
        base_seed = seeds[base]
        config_path = Path(seed_folders[base]) / "config.json"
        if not config_path.is_file():
            raise EvomergeError(f"{seed_folders[base]}: no config.json to base the export on")
        base_config = json.loads(config_path.read_text(encoding="utf-8"))
        layers_of = {}  # (seed, layer) -> its tensors, read once
        for s in slots:
            if (s.seed, s.layer) not in layers_of:
                found = layer_tensors(seeds[s.seed], s.layer)
                if not found:
                    raise EvomergeError(
                        f"{seed_folders[s.seed]}: no tensors of layer {s.layer} "
                        "(names like model.layers.<i>.*)"
                    )
                layers_of[s.seed, s.layer] = found
        jobs = []  # (out name, seed, source name, scale)
        for name in base_seed.names():
            if layer_of(name) is None:
                jobs.append((name, base_seed, name, 1.0))
        for j, s in enumerate(slots):
            for name, prefix, rest in layers_of[s.seed, s.layer]:
                scale = s.scale if is_scaled(rest) else 1.0
                jobs.append((f"{prefix}{j}{rest}", seeds[s.seed], name, scale))
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
