"""One-shot merge, streamed tensor by tensor from lazy seeds to a sharded safetensors folder.

Peak memory is the tensors in flight, never a whole model: for the tensor being merged, one copy
per input model in the compute dtype, the merged result in the output dtype, and the operator's
temporaries, which are per block of ``operators.BLOCK`` entries (TIES and breadcrumbs add the
magnitudes that fall in their sampled bracket, a small fraction of the tensor). For a base and
two models that is about four times the largest tensor. (Reading the next tensor on a thread
while this one is merged was tried: on two cores it competes with the arithmetic and is
slower.)
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from ..errors import EvomergeError
from ..search.keys import key
from .finite import check_inputs
from .merge_config import DTYPES, MergeConfig, parse_size, resolve_value
from .operators import get_merge_method
from .recipe import DEFAULT_LAYER_PATTERN
from .safetensors_io import SeedModel, ShardedWriter, check_seeds


def _resolve_path(text: str, bases: list[Path]) -> Path:
    for base in bases:
        p = (base / text).expanduser()
        if p.exists():
            return p
    raise EvomergeError(
        f"model '{text}': no such file or folder (looked in {', '.join(map(str, bases))}); "
        "give a .safetensors file or a Hugging Face folder on disk"
    )


def _layer_of(name: str) -> int | None:
    m = re.search(DEFAULT_LAYER_PATTERN, name)
    return int(m.group(1)) if m else None


def _params_for(cfg: MergeConfig, name: str, layer: int | None, num_layers: int):
    """Global and per-model parameters of one tensor, overrides applied in order."""
    params = dict(cfg.params)
    model_params = [dict(m.params) for m in cfg.models]
    for override in cfg.overrides:
        if re.search(override.match, name):
            params.update(override.params)
            for mp, extra in zip(model_params, override.model_params or [], strict=False):
                mp.update(extra)
    g = {k: resolve_value(v, name, layer, num_layers) for k, v in params.items()}
    m = [
        {k: resolve_value(v, name, layer, num_layers) for k, v in mp.items()} for mp in model_params
    ]
    return g, m


def run_merge(cfg: MergeConfig, out_dir: Path, bases: list[Path], progress=None) -> dict:
    """Merge as ``cfg`` says into ``out_dir``; returns a summary (tensors, bytes, seconds)."""
    t0 = time.perf_counter()
    method = get_merge_method(cfg.method)
    compute = DTYPES[cfg.dtype]
    out_dtype = DTYPES[cfg.out_dtype or cfg.dtype]
    paths = ([cfg.base] if cfg.base is not None else []) + [m.path for m in cfg.models]
    seeds = [SeedModel(_resolve_path(p, bases)) for p in paths]
    try:
        names = check_seeds(seeds, labels=paths)
        layers = [x for x in (_layer_of(n) for n in names) if x is not None]
        num_layers = max(layers) + 1 if layers else 0
        plan = [(n, seeds[0].shape(n), out_dtype) for n in names]
        has_base = cfg.base is not None
        with ShardedWriter(out_dir, plan, max_shard_bytes=parse_size(cfg.max_shard_size)) as out:
            for i, name in enumerate(names):
                tensors = [s.get(name, dtype=compute) for s in seeds]
                check_inputs(tensors, name, [s.file_of(name) for s in seeds])
                base, models = (tensors[0], tensors[1:]) if has_base else (None, tensors)
                g, m = _params_for(cfg, name, _layer_of(name), num_layers)
                gen = torch.Generator().manual_seed(key(cfg.seed, i)) if method.random else None
                try:
                    merged = method(base, models, m, g, gen)
                except ValueError as exc:
                    raise EvomergeError(f"{cfg.method} on tensor '{name}': {exc}") from None
                out.write(name, merged)
                del tensors, base, models, merged
                if progress is not None:
                    progress(i + 1, len(names))
            out.copy_files(seeds[0].extra_files())
            total = sum(s.nbytes(n) for s in seeds for n in names)
            out.commit()
    finally:
        for s in seeds:
            s.close()
    return {
        "tensors": len(names),
        "bytes_read": total,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "out_dir": str(out_dir),
    }
