"""One-shot merge, streamed tensor by tensor from lazy seeds to a sharded safetensors folder.

Peak memory is the tensors in flight, never a whole model: for the tensor being merged, one copy
per input model in the compute dtype, the merged result in the output dtype, and the operator's
temporaries, which are per block of ``operators.BLOCK`` entries (TIES and breadcrumbs add the
magnitudes that fall in their sampled bracket, a small fraction of the tensor). For a base and
two models that is about four times the largest tensor, for each tensor in flight.

Tensors are merged on a pool of as many threads as torch had intra-op threads, each merge on
one torch thread (:mod:`evomerge.tensors.parallel`): the operators' block passes are many short
ops, and torch's per-op thread barriers stall them on a busy machine. The main thread reads
the next tensor and writes finished ones (the writer puts each at its planned offset, so the
order of writes does not matter); at most one tensor per pool thread is in flight.

What is merged is a plan (:mod:`evomerge.merge.slices`): every tensor from every model for an
ordinary merge, or the stacked layer ranges of ``slices``. Parameters are resolved per tensor
as mergekit resolves them: a model's own settings, then its slice's, then the global ones (where
per-model parameters such as ``weight`` apply to every model), then the method's defaults.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.core.keys import key
from evomerge.merge.merge_config import DTYPES, MergeConfig, parse_size, resolve_setting
from evomerge.merge.slices import PlannedTensor, SliceRange, plan_tensors, whole_model_plan
from evomerge.merge.tokenizer_source import is_tokenizer_file, tokenizer_files
from evomerge.ops.alignment import axis_order, weight_matching
from evomerge.ops.data_aware import input_axis
from evomerge.ops.merged_inputs import sequential_grams
from evomerge.ops.method import SEQUENTIAL_KINDS
from evomerge.ops.operators import MergeMethod, get_merge_method
from evomerge.ops.statistics import example_ids, flat_params, for_models, load_plugin
from evomerge.tensors.finite import check_inputs
from evomerge.tensors.layer_names import layer_of, with_num_layers
from evomerge.tensors.model_ref import open_model
from evomerge.tensors.parallel import one_op_thread
from evomerge.tensors.safetensors_io import SeedModel, ShardedWriter, check_seeds


class _Layout:
    """Seeds, slices (as lists of sources) and the scopes parameters are looked up in."""

    def __init__(self, cfg: MergeConfig, method: MergeMethod):
        self.base_path = cfg.base if method.base.takes_base else None
        if cfg.slices:
            self.paths = list(dict.fromkeys(s.path for e in cfg.slices for s in e.sources))
            self.slices = [
                [(self.paths.index(s.path), s.layer_range, s.params) for s in e.sources]
                for e in cfg.slices
            ]
            self.slice_params = [e.params for e in cfg.slices]
        else:
            entries = [(cfg.base, {})] if cfg.base is not None else []
            entries += [(m.path, m.params) for m in cfg.models]
            self.paths = [p for p, _ in entries]
            self.slices = [[(i, None, params) for i, (_, params) in enumerate(entries)]]
            self.slice_params = [{}]
        self.has_base = [
            next((k for k, (seed, _, _) in enumerate(srcs) if self._is_base(seed)), None)
            for srcs in self.slices
        ]

    def _is_base(self, seed: int) -> bool:
        return self.base_path is not None and self.paths[seed] == self.base_path


def _lookup(scopes, param: str, name: str, t: float):
    for scope in scopes:
        if param in scope:
            value = resolve_setting(scope[param], name, t)
            if value is not None:
                return value
    return None


def _params_for(cfg, method, layout, tensor: PlannedTensor, base_pos):
    """Global and per-model parameters of one planned tensor (mergekit's precedence)."""
    name = tensor.name
    glob = dict(cfg.params)
    model_extra: list[dict] = [{} for _ in cfg.models]
    for override in cfg.overrides:
        if re.search(override.match, name):
            glob.update(override.params)
            for extra, mp in zip(model_extra, override.model_params or [], strict=False):
                extra.update(mp)
    global_scopes = [layout.slice_params[tensor.slice], glob]
    given = [k for scope in global_scopes for k in scope if k not in method.model_params]
    g = {}
    for p in dict.fromkeys([*given, *method.params.names]):
        value = _lookup(global_scopes, p, name, tensor.t)
        if value is not None:
            g[p] = value
    sources = layout.slices[tensor.slice]
    offset = 0 if cfg.slices or cfg.base is None else 1
    m = []
    for k, (_, _, own) in enumerate(sources):
        if k == base_pos:
            continue
        own = {**own, **(model_extra[k - offset] if not cfg.slices else {})}
        in_name = tensor.sources[k][1]
        mp = {}
        for p in dict.fromkeys([*own, *method.model_params.names]):
            value = _lookup([own], p, in_name, tensor.t)
            if value is None and p in method.model_params:
                value = _lookup(global_scopes, p, in_name, tensor.t)
            if value is not None:
                mp[p] = value
        m.append(mp)
    return g, m


def _plan(cfg, layout, seeds, labels) -> list[PlannedTensor]:
    if not cfg.slices:
        names = check_seeds(seeds, labels=labels)
        return whole_model_plan(names, len(seeds))
    ranges = [[SliceRange(seed, a, b) for seed, (a, b), _ in srcs] for srcs in layout.slices]
    try:
        plan = plan_tensors({i: s.names() for i, s in enumerate(seeds)}, ranges)
    except ValueError as exc:
        raise EvomergeError(f"slices: {exc}") from None
    for tensor in plan:
        shapes = {tuple(seeds[m].shape(n)) for m, n in tensor.sources}
        if len(shapes) > 1:
            listed = ", ".join(f"{labels[m]}:{n}" for m, n in tensor.sources)
            raise EvomergeError(
                f"slices: tensor '{tensor.name}' comes from tensors of different shapes ({listed})"
            )
    return plan


def _stacked_config(seed: SeedModel, plan: list[PlannedTensor]) -> str | None:
    """The first source's config.json with the stacked layer count, or None if it has none."""
    path = seed.path / "config.json" if seed.path.is_dir() else None
    if path is None or not path.is_file():
        return None
    layers: dict[int, int] = {}
    for t in plan:
        out, src = layer_of(t.name), layer_of(t.sources[0][1])
        if out is not None:
            layers.setdefault(out, src)
    config = with_num_layers(
        json.loads(path.read_text()), len(layers), [layers[i] for i in sorted(layers)]
    )
    return json.dumps(config, indent=2) + "\n"


def _statistics(cfg, method, layout, seeds, out_dir, bases, message):
    """Per input (None for the base), the memory-mapped statistics a data-aware method reads."""
    if method.statistics is None or method.statistics in (*SEQUENTIAL_KINDS, "coefficients"):
        return None  # computed through the merge itself: _merged_grams, _learned
    models = [k for k, p in enumerate(layout.paths) if not layout._is_base(k)]
    files = for_models(
        cfg.statistics,
        method.statistics,
        [seeds[k] for k in models],
        [layout.paths[k] for k in models],
        out_dir,
        bases,
        message,
    )
    out = [None] * len(seeds)
    for k, f in zip(models, files, strict=True):
        out[k] = f
    return out


class _InMemory:
    """Statistics held in memory, read as a :class:`StatisticsFile` is."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    def close(self) -> None:
        self.tensors = {}


def _merged_grams(cfg, layout, seeds, plan, aligned, bases, message, merge_one, cross=False):
    """RegMean++ and PLeaS: per input, its Grams through the merged earlier layers (PLeaS:
    stacked with the cross Grams) (not cached: they depend on every model and parameter of
    this merge)."""
    spec, plugin = load_plugin(cfg.statistics, bases)
    src = cfg.statistics
    models = [k for k in range(len(seeds)) if not layout._is_base(k)]
    groups = src.examples if src.examples is not None else [None] * len(models)
    ids = [
        example_ids(plugin, g, src.limit, f"statistics.examples[{i}]") for i, g in enumerate(groups)
    ]

    def read(k, name):
        t = seeds[k].get(name, dtype=torch.float32)
        return t if aligned is None else aligned.tensor(k, name, t)

    flats = []
    for k in models:
        seed = _AlignedSeed(seeds[k], k, read) if aligned is not None else seeds[k]
        flats.append(flat_params(plugin, seed, layout.paths[k]))
    index = {t.name: (i, t) for i, t in enumerate(plan)}

    def merge(name, grams):
        i, tensor = index[name]
        tensors = [read(m, n) for m, n in tensor.sources]
        return merge_one(i, tensor, tensors, {"statistics": grams})

    if message is not None:
        what = "PLeaS" if cross else "RegMean++"
        message(f"{what} statistics: {len(models)} models, layer by layer through the merge")
    try:
        _, grams = sequential_grams(plugin, flats, ids, merge, src.batch_size, cross)
    except ValueError as exc:
        raise EvomergeError(f"statistics.plugin: {exc}") from None
    out: list = [None] * len(seeds)
    for k, g in zip(models, grams, strict=True):
        out[k] = _InMemory(g)
    return out


def _learned(cfg, method, layout, seeds, aligned, bases, message):
    """AdaMerging, FW-Merging: coefficients learnt over the whole model through the
    statistics plug-in, then handed to the kernel as each model's statistics. The base and
    the models are held as flat float32 vectors while they are learnt (not streamed)."""
    from evomerge.ops.learned_coefficients import Pool

    spec, plugin = load_plugin(cfg.statistics, bases)
    src = cfg.statistics
    models = [k for k in range(len(seeds)) if not layout._is_base(k)]
    base = next(k for k in range(len(seeds)) if layout._is_base(k))
    groups = src.examples if src.examples is not None else [None] * len(models)
    ids = [
        example_ids(plugin, g, src.limit, f"statistics.examples[{i}]") for i, g in enumerate(groups)
    ]

    def read(m, name):
        return aligned.tensor(m, name, seeds[m].get(name, dtype=torch.float32))

    def flat(k):
        seed = seeds[k] if aligned is None else _AlignedSeed(seeds[k], k, read)
        return flat_params(plugin, seed, layout.paths[k])

    params = {n: v for n, v in cfg.params.items() if n in method.params}
    bad = next((n for n, v in params.items() if isinstance(v, (list, dict))), None)
    if bad is not None:
        raise EvomergeError(f"parameters.{bad}: {cfg.method} takes one value, not one per layer")
    params = method.params.fill(params, cfg.method)
    names = [n for n, _ in plugin.param_layout()]
    group_of = names if params.get("layer_wise", True) else ["all"] * len(names)
    try:
        pool = Pool(flat(base), [flat(k) for k in models], plugin.param_layout(), group_of)
        if message is not None:
            message(f"{cfg.method}: learning coefficients over {len(models)} models")
        coeffs, report = method.learner(plugin, pool, ids, params, cfg.seed, src.batch_size)
    except (TypeError, ValueError) as exc:
        raise EvomergeError(f"statistics.plugin: {exc}") from None
    if message is not None:
        message(f"{cfg.method}: {report['gradient_steps']} gradient steps; {pool.table(coeffs)}")
    out: list = [None] * len(seeds)
    for k, stats in zip(models, pool.per_model(coeffs), strict=True):
        out[k] = _InMemory(stats)
    return out


class _AlignedSeed:
    """A seed's tensors as :func:`flat_params` reads them, aligned."""

    def __init__(self, seed, k, read):
        self.seed, self.k, self.read = seed, k, read

    def get(self, name, dtype=None):
        return self.read(self.k, name)


def _align_spec(align, seed, label):
    """``align``'s permutation spec; for ``architecture``, built from the reference's
    ``config.json`` and tensor names."""
    if align.architecture is None:
        return align.spec()
    path = seed.path / "config.json" if seed.path.is_dir() else None
    if path is None or not path.is_file():
        raise EvomergeError(
            f"align.architecture: model '{label}' has no config.json to read its layers and "
            "heads from; list align.permutations instead"
        )
    try:
        return align.spec(json.loads(path.read_text()), seed.names())
    except (ValueError, json.JSONDecodeError) as exc:
        raise EvomergeError(f"align.architecture: model '{label}': {exc}") from None


class _Aligned:
    """The permutations that align each input to ``align.reference`` (weight matching on the
    tensors the spec names, read once), applied to tensors and statistics as they stream."""

    def __init__(self, cfg: MergeConfig, layout: _Layout, seeds, message=None):
        ref = cfg.align.reference + (cfg.base is not None)
        self.spec = _align_spec(cfg.align, seeds[ref], layout.paths[ref])
        names = list(self.spec.axes)
        self.perms: list[dict | None] = [None] * len(seeds)

        def read(k):
            have = set(seeds[k].names())
            missing = next((n for n in names if n not in have), None)
            if missing is not None:
                raise EvomergeError(
                    f"align.permutations: model '{layout.paths[k]}' has no tensor '{missing}'; "
                    "name tensors of the models being merged"
                )
            return {n: seeds[k].get(n, dtype=torch.float32) for n in names}

        reference = read(ref)
        try:
            self.spec.sizes({n: tuple(t.shape) for n, t in reference.items()})
        except ValueError as exc:
            raise EvomergeError(f"align.permutations.{exc}") from None
        for k in range(len(seeds)):
            if k == ref:
                continue
            if message is not None:
                message(f"aligning {layout.paths[k]} to {layout.paths[ref]} (weight matching)")
            try:
                self.perms[k] = weight_matching(
                    reference, read(k), self.spec, cfg.align.max_iter, cfg.align.seed
                )
            except ValueError as exc:
                raise EvomergeError(f"align: model '{layout.paths[k]}': {exc}") from None

    def tensor(self, seed: int, name: str, t: torch.Tensor) -> torch.Tensor:
        perms = self.perms[seed]
        return t if perms is None else self.spec.permute(name, t, perms)

    def statistic(self, seed: int, name: str, kind: str, stat, weight_shape):
        """A Fisher diagonal moves with its tensor; a Gram with its weight's input axis."""
        perms = self.perms[seed]
        if stat is None or perms is None:
            return stat
        if kind == "fisher":
            return self.spec.permute(name, stat, perms)
        perm = self.spec.axes.get(name, {}).get(input_axis(weight_shape, tuple(stat.shape)))
        if perm is None:
            return stat
        p = axis_order(perms[perm], stat.shape[0])  # a head's block of inputs moves whole
        return stat.index_select(0, p).index_select(1, p)


def run_merge(
    cfg: MergeConfig, out_dir: Path, bases: list[Path], progress=None, message=None
) -> dict:
    """Merge as ``cfg`` says into ``out_dir``; returns a summary (tensors, bytes, seconds).

    ``message(text)`` is told about the statistics pass of data-aware methods.
    """
    t0 = time.perf_counter()
    method = get_merge_method(cfg.method)
    compute = DTYPES[cfg.dtype] if cfg.dtype else None
    fixed_out = cfg.out_dtype or cfg.dtype
    layout = _Layout(cfg, method)
    seeds = [open_model(p, bases) for p in layout.paths]
    try:
        plan = _plan(cfg, layout, seeds, layout.paths)
        stats = _statistics(cfg, method, layout, seeds, out_dir, bases, message)
        aligned = _Aligned(cfg, layout, seeds, message) if cfg.align is not None else None
        sequential = method.statistics in (*SEQUENTIAL_KINDS, "coefficients")  # aligned
        extra = tokenizer_files(cfg.tokenizer_source, seeds, layout.paths, bases)
        first = seeds[layout.slices[0][0][0]]

        def out_dtype(tensor: PlannedTensor):
            if fixed_out:
                return DTYPES[fixed_out]
            ref = layout.has_base[tensor.slice] or 0
            seed, name = tensor.sources[ref]
            return seeds[seed].dtype(name)

        shapes = [
            (t.name, seeds[t.sources[0][0]].shape(t.sources[0][1]), out_dtype(t)) for t in plan
        ]
        total = 0

        def merge_one(i: int, tensor: PlannedTensor, tensors: list, data: dict) -> torch.Tensor:
            files = [seeds[m].file_of(n) for m, n in tensor.sources]
            check_inputs(tensors, tensor.name, files)  # here, so the checks run in parallel too
            base_pos = layout.has_base[tensor.slice]
            base = tensors[base_pos] if base_pos is not None else None
            models = [x for k, x in enumerate(tensors) if k != base_pos]
            g, m = _params_for(cfg, method, layout, tensor, base_pos)
            gen = torch.Generator().manual_seed(key(cfg.seed, i)) if method.random else None
            try:
                return method(base, models, m, g, gen, **data)
            except ValueError as exc:
                raise EvomergeError(f"{cfg.method} on tensor '{tensor.name}': {exc}") from None

        if method.statistics in SEQUENTIAL_KINDS:
            stats = _merged_grams(
                cfg,
                layout,
                seeds,
                plan,
                aligned,
                bases,
                message,
                merge_one,
                cross=method.statistics == "merged_cross_gram",
            )
        elif method.statistics == "coefficients":
            stats = _learned(cfg, method, layout, seeds, aligned, bases, message)

        with (
            ShardedWriter(out_dir, shapes, max_shard_bytes=parse_size(cfg.max_shard_size)) as out,
            one_op_thread() as threads,
            ThreadPoolExecutor(max_workers=max(1, threads)) as pool,
        ):
            pending: deque = deque()
            written = 0

            def write_oldest() -> None:
                nonlocal written
                tensor, future = pending.popleft()
                out.write(tensor.name, future.result())
                written += 1
                if progress is not None:
                    progress(written, len(plan))

            try:
                for i, tensor in enumerate(plan):
                    tensors = [seeds[m].get(n, dtype=compute) for m, n in tensor.sources]
                    if aligned is not None:
                        tensors = [
                            aligned.tensor(m, n, t)
                            for (m, n), t in zip(tensor.sources, tensors, strict=True)
                        ]
                    total += sum(seeds[m].nbytes(n) for m, n in tensor.sources)
                    data = {}
                    if stats is not None:  # read here, beside the tensors, not in the pool
                        base_pos = layout.has_base[tensor.slice]
                        data["statistics"] = [
                            stats[s].get(n)
                            if aligned is None or sequential
                            else aligned.statistic(
                                s, n, method.statistics, stats[s].get(n), seeds[s].shape(n)
                            )
                            for k, (s, n) in enumerate(tensor.sources)
                            if k != base_pos
                        ]
                    pending.append((tensor, pool.submit(merge_one, i, tensor, tensors, data)))
                    del tensors, data
                    while len(pending) >= max(1, threads):
                        write_oldest()
                while pending:
                    write_oldest()
            except BaseException:
                for _, future in pending:
                    future.cancel()
                raise
            files = first.extra_files()
            if extra is not None:  # the tokenizer of the model tokenizer_source names
                files = [p for p in files if not is_tokenizer_file(p.name)] + extra
            config = _stacked_config(first, plan) if cfg.slices else None
            if config is not None:
                files = [p for p in files if p.name != "config.json"]
            out.copy_files(files)
            if config is not None:
                out.write_text("config.json", config)
            out.commit()
    finally:
        for s in seeds:
            s.close()
    return {
        "tensors": len(plan),
        "bytes_read": total,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "out_dir": str(out_dir),
    }
