"""The statistics pass of the data-aware merges: per-model Fisher diagonals and input Grams.

A model's statistics come from a fitness plug-in that implements
:class:`~evomerge.core.contracts.ExampleStatistics` (the same plug-ins searches use, with the same
options), over the training examples of one of its example groups (the model's own task).
They are written once as safetensors keyed by tensor name (temp name + rename) and read back
memory-mapped, so the merge that uses them stays one tensor per input at a time.

* Fisher (``"fisher"``): the empirical diagonal Fisher, ``mean_x (d log p(y|x) / d theta)^2``
  with ``y`` the example's own label or target tokens (not sampled from the model). With
  ``batch_size`` 1 (the default) the gradient is per example; with ``b > 1`` it is the gradient
  of the summed log-likelihood of ``b`` examples, squared and divided by ``b`` (a cheaper,
  different estimator: cross terms between examples remain).
* Gram (``"gram"``): ``G = X^T X`` summed over all input rows (tokens) of each linear layer, in
  float64, stored float32; ``batch_size`` only sets how many examples go through at once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from evomerge.core.contracts import ExampleStatistics
from evomerge.core.errors import ConfigError, EvomergeError
from evomerge.core.files import replacing
from evomerge.core.plugin_loader import load_fitness
from evomerge.core.plugins import resolve_spec
from evomerge.tensors.safetensors_io import SeedModel

KINDS = ("fisher", "gram")
#: Bumped when what the files hold changes, so old caches are not reused.
FORMAT = 1


class StatisticsSource(BaseModel):
    """``statistics:`` — where the data of a data-aware merge (fisher, regmean) comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugin: str = Field(description="Fitness plug-in (file.py:Class or module:Class).")
    options: dict = Field({}, description="Keyword arguments of the plug-in class.")
    examples: list[str | None] | None = Field(
        None,
        description="Per model, in order, the example group its statistics are taken over "
        "(example_groups(): a task name, '0-4', ...); null or absent: every training example.",
    )
    limit: int | None = Field(None, ge=1, description="At most this many examples per model.")
    batch_size: int = Field(1, ge=1, description="Examples per gradient (Fisher) or forward.")
    cache: str | None = Field(
        None,
        description="Folder for the statistics files (default: .evomerge-stats beside the output).",
    )


class SearchStatistics(BaseModel):
    """``recipe.statistics:`` — the data of a data-aware recipe, from the search's own plug-in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: list[str | None] | None = Field(
        None,
        description="Per merged seed (the seeds other than recipe.base, in order), the example "
        "group its statistics are taken over; null or absent: every training example.",
    )
    limit: int | None = Field(None, ge=1, description="At most this many examples per seed.")
    batch_size: int = Field(1, ge=1, description="Examples per gradient (Fisher) or forward.")


def per_seed(plugin, kind: str, spec: SearchStatistics, flats) -> list[dict[str, torch.Tensor]]:
    """Statistics of each merged seed (``flats``: its flat float32 parameters, or a callable)."""
    groups = spec.examples if spec.examples is not None else [None] * len(flats)
    if len(groups) != len(flats):
        raise ValueError(
            f"statistics.examples: {len(groups)} entries for {len(flats)} merged seeds; give "
            "one example group per seed other than the base, in order"
        )
    out = []
    for i, (flat, group) in enumerate(zip(flats, groups, strict=True)):
        ids = example_ids(plugin, group, spec.limit, f"recipe.statistics.examples[{i}]")
        params = flat() if callable(flat) else flat
        out.append(compute(plugin, kind, params, ids, spec.batch_size))
    return out


# --- computing ------------------------------------------------------------------------------


def example_ids(plugin, group: str | None, limit: int | None, where: str) -> torch.Tensor:
    """The training example ids of ``group`` (all when None), the first ``limit`` of them."""
    if group is None:
        ids = list(range(plugin.num_examples))
    else:
        groups = plugin.example_groups()
        if group not in groups:
            known = ", ".join(groups) or "none"
            raise ConfigError(f"{where}: no example group '{group}' (the plug-in has: {known})")
        ids = list(groups[group])
    if limit is not None:
        ids = ids[:limit]
    if not ids:
        raise ConfigError(f"{where}: the example group '{group}' is empty")
    return torch.tensor(ids, dtype=torch.long)


def chunks(ids: torch.Tensor, size: int):
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def split(flat: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    """A flat vector as named views in ``layout``'s shapes.

    One ``torch.split`` rather than a slice per tensor: under autograd a slice's backward
    writes into a zero tensor of the whole vector, so a model of T tensors would cost T
    full-size gradients per backward pass; a split's backward is one concatenation.
    """
    sizes = [math.prod(shape) for _, shape in layout]
    if sum(sizes) != flat.numel():
        raise ValueError(
            f"the layout covers {sum(sizes)} parameters, the vector has {flat.numel()}"
        )
    parts = torch.split(flat, sizes)
    return {name: t.view(shape) for (name, shape), t in zip(layout, parts, strict=True)}


def fisher_diagonal(plugin, params: torch.Tensor, ids: torch.Tensor, batch_size: int = 1):
    """The empirical diagonal Fisher of ``params`` over examples ``ids`` (flat, float32)."""
    p = params.detach().to(torch.float32).clone().requires_grad_(True)
    total = torch.zeros_like(p)
    for chunk in chunks(ids, batch_size):
        (grad,) = torch.autograd.grad(plugin.log_likelihoods(p, chunk).sum(), p)
        total.addcmul_(grad, grad, value=1.0 / len(chunk))
        del grad
    return total.div_(math.ceil(len(ids) / batch_size))


@torch.no_grad()
def gram_matrices(plugin, params: torch.Tensor, ids: torch.Tensor, batch_size: int = 16):
    """``{weight name: X^T X}`` of every linear layer's inputs over examples ``ids``."""
    grams: dict[str, torch.Tensor] = {}
    p = params.detach().to(torch.float32)
    for chunk in chunks(ids, batch_size):
        for name, x in plugin.linear_inputs(p, chunk).items():
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            g = x.T @ x
            grams[name] = g if name not in grams else grams[name] + g
    return {n: g.to(torch.float32) for n, g in grams.items()}


def compute(plugin, kind: str, params, ids, batch_size: int) -> dict[str, torch.Tensor]:
    """One model's statistics of ``kind``, keyed by ``param_layout()`` name."""
    if not isinstance(plugin, ExampleStatistics):
        raise ConfigError(
            f"statistics.plugin: {type(plugin).__name__} cannot give data-aware statistics; it "
            "needs log_likelihoods and linear_inputs (evomerge.core.contracts.ExampleStatistics)"
        )
    layout = plugin.param_layout()
    if kind == "fisher":
        flat = fisher_diagonal(plugin, params, ids, batch_size)
        return {n: t.contiguous() for n, t in split(flat, layout).items()}
    if kind == "gram":
        grams = gram_matrices(plugin, params, ids, batch_size)
        shapes = dict(layout)
        for name, g in grams.items():
            shape = shapes.get(name)
            if shape is None or len(shape) != 2 or g.shape[0] not in shape:
                raise ValueError(
                    f"linear_inputs: '{name}' is not a 2-D weight of param_layout() with an "
                    f"input dimension of {g.shape[0]}"
                )
        return grams
    raise ValueError(f"unknown statistics kind '{kind}' (known: {', '.join(KINDS)})")


# --- files ----------------------------------------------------------------------------------


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Safetensors at ``path``, written under a temporary name, fsynced and renamed into place
    (a full disk or a kill leaves no file at ``path``, so the next run computes it again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    except (OSError, SafetensorError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise EvomergeError(
            f"{path}: cannot write the statistics ({why}); nothing was kept: free disk space "
            "or set statistics.cache to another folder",
            exit_code=1,
        ) from None


def damage_of(path: Path, kind: str) -> str | None:
    """Why a cached statistics file cannot be used (truncated or not safetensors: its header
    checked as every tensor file's is; or of another kind), or None."""
    try:
        SeedModel(path).close()
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (EvomergeError, OSError, SafetensorError) as exc:
        return str(exc)
    if meta.get("kind") != json.dumps(kind):
        return f"it holds {meta.get('kind')} statistics, not {kind}"
    return None


class StatisticsFile:
    """One model's statistics, memory-mapped; ``get(name)`` is None for a tensor without."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="pt")
        self._names = set(self._file.keys())

    def get(self, name: str) -> torch.Tensor | None:
        return self._file.get_tensor(name) if name in self._names else None

    def close(self) -> None:
        self._file = None


def _identity(files: Sequence[Path]) -> list:
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(source: StatisticsSource, kind: str, model_files, group, plugin_spec) -> str:
    """sha256 of everything the statistics depend on (plug-in, options, data, model files)."""
    text = json.dumps(
        {
            "format": FORMAT,
            "kind": kind,
            "plugin": plugin_spec,
            "options": source.options,
            "group": group,
            "limit": source.limit,
            "batch_size": source.batch_size,
            "model": _identity(model_files),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- for a merge: one file per model, computed once ------------------------------------------


def load_plugin(source: StatisticsSource, bases: Sequence[Path]):
    """The plug-in ``source`` names, made with its options (checked as a search's plug-in
    is) and set up on the CPU."""
    spec = resolve_spec(source.plugin, list(bases), field="statistics.plugin")
    plugin = load_fitness(spec, source.options, field="statistics.plugin")
    try:
        plugin.setup(torch.device("cpu"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"statistics.options: {exc}") from None
    return spec, plugin


def flat_params(plugin, seed, label: str) -> torch.Tensor:
    """A seed model's tensors in the plug-in's ``param_layout()`` order, as one float32 vector."""
    parts = []
    for name, shape in plugin.param_layout():
        try:
            t = seed.get(name, dtype=torch.float32)
        except KeyError:
            raise ConfigError(
                f"statistics.plugin: model '{label}' has no tensor '{name}' of the plug-in's "
                "param_layout(); the plug-in must describe the models being merged"
            ) from None
        if tuple(t.shape) != tuple(shape):
            raise ConfigError(
                f"statistics.plugin: model '{label}': tensor '{name}' has shape "
                f"{tuple(t.shape)}, the plug-in's param_layout() says {tuple(shape)}"
            )
        parts.append(t.reshape(-1))
    return torch.cat(parts)


def for_models(source, kind, seeds, labels, out_dir: Path, bases, progress=None):
    """One :class:`StatisticsFile` per model (``seeds``), computing those not cached yet."""
    groups = source.examples if source.examples is not None else [None] * len(seeds)
    if len(groups) != len(seeds):
        raise ConfigError(
            f"statistics.examples: {len(groups)} entries for {len(seeds)} models; give one "
            "example group per model, in the order of models"
        )
    folder = Path(source.cache) if source.cache else Path(out_dir).parent / ".evomerge-stats"
    plugin = spec = None
    files = []
    for i, (seed, label, group) in enumerate(zip(seeds, labels, groups, strict=True)):
        key = cache_key(source, kind, seed.files, group, source.plugin)
        path = folder / key / f"{kind}.safetensors"
        damage = damage_of(path, kind) if path.is_file() else None
        if damage is not None and progress is not None:
            progress(f"{path}: damaged cached statistics ({damage}); computing them again")
        if not path.is_file() or damage is not None:
            if plugin is None:
                spec, plugin = load_plugin(source, bases)
            ids = example_ids(plugin, group, source.limit, f"statistics.examples[{i}]")
            if progress is not None:
                progress(f"{kind} statistics of {label}: {len(ids)} examples -> {path}")
            params = flat_params(plugin, seed, label)
            stats = compute(plugin, kind, params, ids, source.batch_size)
            write(path, stats, {"kind": kind, "model": label, "group": group, "examples": len(ids)})
            del params, stats
        files.append(StatisticsFile(path))
    return files
