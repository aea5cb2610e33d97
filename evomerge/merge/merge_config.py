"""The one-shot merge config: evomerge's own YAML, or a mergekit YAML read as it is.

Both become one :class:`MergeConfig`. Parameter values may be a number, a gradient (a list of
numbers spread over the layers, as in mergekit) or a list of ``{filter, value}`` entries, read
as mergekit reads them: the first entry that applies wins, where an entry applies when its
``filter`` occurs in the tensor name, is ``*``, or is absent (an entry without a filter applies
everywhere, at its position in the list); when none applies the parameter is looked up in the
next scope (a model's own parameters, then the slice's, then the global ``parameters``), then
its default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.core import extensions
from evomerge.core.errors import ConfigError
from evomerge.ops.alignment import Alignment
from evomerge.ops.operators import BaseRole, get_merge_method
from evomerge.ops.statistics import StatisticsSource
from evomerge.tensors.dtypes import DTYPES

ParamValue = float | bool | list[float] | list[dict[str, Any]] | dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    path: str = Field(description="A .safetensors file or a Hugging Face folder.")
    params: dict[str, ParamValue] = Field({}, description="Per-model parameters (weight, ...).")


class SliceSource(_Strict):
    path: str = Field(description="A .safetensors file or a Hugging Face folder.")
    layer_range: tuple[int, int] = Field(description="Layers [start, end) taken from it.")
    params: dict[str, ParamValue] = Field({}, description="Per-model parameters in this slice.")


class SliceEntry(_Strict):
    sources: list[SliceSource] = Field(min_length=1)
    params: dict[str, ParamValue] = Field({}, description="Parameters of this slice's tensors.")


class Override(_Strict):
    match: str = Field(description="Regex on tensor names this override applies to.")
    params: dict[str, ParamValue] = {}
    model_params: list[dict[str, ParamValue]] | None = None

    @field_validator("match")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:  # not a ValueError: pydantic would let it through
            raise ValueError(f"'{v}' is not a valid regular expression ({exc})") from None
        return v


class MergeConfig(_Strict):
    """evomerge's own merge config."""

    method: str
    base: str | None = None
    models: list[ModelEntry] = Field([], description="The models to merge (or give slices).")
    slices: list[SliceEntry] | None = Field(
        None, description="Layer stacking: layer ranges of the models, stacked in order."
    )
    params: dict[str, ParamValue] = Field(
        {}, description="Global parameters; per-model ones (weight, ...) apply to every model."
    )
    overrides: list[Override] = []
    dtype: str | None = Field(
        None, description="Compute dtype: float32, bfloat16 or float16 (default: the seeds')."
    )
    out_dtype: str | None = Field(None, description="Output dtype (default: dtype).")
    tokenizer_source: str | None = Field(
        None,
        description="mergekit's tokenizer_source (base, union or a model): accepted when the "
        "seeds' vocabularies are identical, refused otherwise.",
    )
    seed: int = Field(0, description="Seed of random methods (DARE).")
    max_shard_size: str = Field("5GB", description="Largest output shard, e.g. 2GB, 500MB.")
    statistics: StatisticsSource | None = Field(
        None, description="Data of the data-aware methods (fisher, regmean): a fitness plug-in."
    )
    extensions: list[str] | None = Field(
        None,
        description="Your modules that register merge methods: .py files (relative to the "
        "config's folder or the working directory) or module names, imported first.",
    )
    align: Alignment | None = Field(
        None,
        description="Permutation alignment (weight matching) of every input to one of them, "
        "before the method merges: for models trained from different initialisations.",
    )

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _dtype(cls, v):
        if v is not None and v not in DTYPES:
            raise ValueError(f"'{v}' is not one of {', '.join(DTYPES)}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v):
        get_merge_method(v)
        return v

    @model_validator(mode="after")
    def _models_or_slices(self):
        if bool(self.models) == bool(self.slices):
            raise ValueError("give either models or slices (exactly one of them)")
        if self.slices and any(o.model_params is not None for o in self.overrides):
            raise ValueError("overrides: model_params are per model; with slices use params")
        return self


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"max_shard_size: '{text}' is not a size like 5GB or 500MB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
    scale |= {"GIB": 2**30}
    return int(float(m.group(1)) * scale[unit])


_MERGEKIT_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "random_seed",
    "statistics",
    "extensions",
}


def from_mergekit(raw: dict, source: str) -> dict:
    """Translate a mergekit YAML mapping into evomerge's merge config mapping."""
    unsupported = sorted(set(raw) - _MERGEKIT_KEYS)
    if unsupported:
        raise ConfigError(
            f"{source}: {unsupported[0]}: this mergekit key is not supported by 'evomerge merge' "
            f"(supported: {', '.join(sorted(_MERGEKIT_KEYS))})"
        )
    method = raw.get("merge_method")
    base = raw.get("base_model")
    takes_base = _takes_base(method)
    out: dict = {"method": method, "params": raw.get("parameters") or {}}
    if raw.get("slices") is not None:
        out["slices"] = [_mergekit_slice(s, i, source) for i, s in enumerate(raw["slices"])]
    else:
        models = []
        for i, entry in enumerate(raw.get("models") or []):
            if not isinstance(entry, dict) or "model" not in entry:
                raise ConfigError(f"{source}: models[{i}]: expected a mapping with 'model'")
            if entry["model"] == base and takes_base:
                continue  # the base is the reference point, not a task vector
            models.append({"path": entry["model"], "params": entry.get("parameters") or {}})
        if base is not None and not takes_base and base not in [m["path"] for m in models]:
            models.append({"path": base, "params": {}})  # mergekit adds it as an input
        out["models"] = models
    if base is not None and takes_base:
        out["base"] = base
    for key in ("dtype", "out_dtype", "tokenizer_source", "statistics", "extensions"):
        if raw.get(key) is not None:
            out[key] = raw[key]
    if raw.get("random_seed") is not None:
        out["seed"] = raw["random_seed"]
    return out


def _mergekit_slice(entry, i: int, source: str) -> dict:
    where = f"{source}: slices[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("sources"), list):
        raise ConfigError(f"{where}: expected a mapping with a 'sources' list")
    extra = sorted(set(entry) - {"sources", "parameters"})
    if extra:
        raise ConfigError(
            f"{where}: {extra[0]}: not supported by 'evomerge merge' (supported: sources, "
            "parameters); give base_model at the top level"
        )
    sources = []
    for j, src in enumerate(entry["sources"]):
        if not isinstance(src, dict) or "model" not in src or "layer_range" not in src:
            raise ConfigError(
                f"{where}.sources[{j}]: expected a mapping with model and layer_range"
            )
        sources.append(
            {
                "path": src["model"],
                "layer_range": src["layer_range"],
                "params": src.get("parameters") or {},
            }
        )
    return {"sources": sources, "params": entry.get("parameters") or {}}


def _takes_base(method) -> bool:
    """Whether a mergekit ``base_model`` is this method's base (rather than one more input)."""
    try:
        m = get_merge_method(str(method))
    except ValueError:
        return False
    return m.base.takes_base


def load_merge_config(path: Path, raw: Any) -> MergeConfig:
    """Validate either format; one line naming the field on error."""
    from evomerge.core.validation import format_validation

    source = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the merge config must be a YAML mapping")
    if raw.get("extensions") is not None:  # first: the method may be defined only there
        bases = [Path.cwd(), Path(path).resolve().parent]
        raw = {**raw, "extensions": extensions.import_for_config(raw["extensions"], bases, source)}
    if "merge_method" in raw:
        raw = from_mergekit(raw, source)
    try:
        cfg = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc, MergeConfig)) from None
    method = get_merge_method(cfg.method)
    if method.base is BaseRole.REQUIRED and cfg.base is None:
        raise ConfigError(f"{source}: base: {cfg.method} merges task vectors; name a base model")
    if method.base is BaseRole.ENDPOINT and (
        cfg.base is None or (cfg.models and len(cfg.models) != 1)
    ):
        raise ConfigError(
            f"{source}: {cfg.method} merges two models: a base (one end) and one model (the "
            "other end); give base and exactly one entry in models"
        )
    if method.statistics is not None:
        if cfg.statistics is None:
            raise ConfigError(
                f"{source}: statistics: {cfg.method} needs data; add a top-level block "
                "'statistics: {plugin: fitness/x.py:Class, options: {...}, examples: [group per "
                "model]}' naming the fitness plug-in whose examples the statistics come from"
            )
        if cfg.slices:
            raise ConfigError(f"{source}: slices: {cfg.method} merges whole models; give models")
        groups = cfg.statistics.examples
        if groups is not None and len(groups) != len(cfg.models):
            raise ConfigError(
                f"{source}: statistics.examples: {len(groups)} entries for {len(cfg.models)} "
                "models; give one example group per model, in the order of models"
            )
    elif cfg.statistics is not None:
        raise ConfigError(
            f"{source}: statistics: only data-aware methods (fisher, regmean) use it, not "
            f"{cfg.method}; remove it"
        )
    takes_base = method.base.takes_base
    for i, entry in enumerate(cfg.slices or []):
        paths = [s.path for s in entry.sources]
        if takes_base and cfg.base is not None and cfg.base not in paths:
            raise ConfigError(
                f"{source}: slices[{i}]: the base model '{cfg.base}' is not among its sources; "
                f"{cfg.method} needs it in every slice"
            )
    check_parameters(cfg, method, source)
    if cfg.align is not None:
        if cfg.slices:
            raise ConfigError(f"{source}: align: alignment permutes whole models; give models")
        if cfg.align.reference >= len(cfg.models):
            raise ConfigError(
                f"{source}: align.reference: {cfg.align.reference} but there are "
                f"{len(cfg.models)} models; give the index of one of them (0 is the first)"
            )
    for override in cfg.overrides:
        if override.model_params is not None and len(override.model_params) != len(cfg.models):
            raise ConfigError(
                f"{source}: overrides[{override.match}].model_params: one entry per model "
                f"({len(cfg.models)}) expected"
            )
    return cfg


def check_parameters(cfg: MergeConfig, method, source: str) -> None:
    """Every parameter value of every scope, against the method's declaration (one line naming
    the key, the value and the allowed range), so nothing out of range reaches a tensor."""
    scopes = [("params", cfg.params)]
    scopes += [(f"models[{i}].params", m.params) for i, m in enumerate(cfg.models)]
    for i, entry in enumerate(cfg.slices or []):
        scopes.append((f"slices[{i}].params", entry.params))
        scopes += [
            (f"slices[{i}].sources[{j}].params", s.params) for j, s in enumerate(entry.sources)
        ]
    for i, override in enumerate(cfg.overrides):
        scopes.append((f"overrides[{i}].params", override.params))
        for j, mp in enumerate(override.model_params or []):
            scopes.append((f"overrides[{i}].model_params[{j}]", mp))
    for where, params in scopes:
        for name, value in params.items():
            _check_value(method, name, value, f"{where}.{name}", source)
    for i, model in enumerate(cfg.models):  # joint rules (della's density +/- epsilon)
        given = {**cfg.params, **model.params}
        intervals = {k: span for k, v in given.items() if (span := _span(v)) is not None}
        problem = method.joint_problem(intervals)
        if problem is not None:
            raise ConfigError(f"{source}: models[{i}] ({model.path}): {problem}")


def _span(value) -> tuple[float, float] | None:
    """The lowest and highest number a setting can resolve to (a scalar, a gradient or filter
    entries), or None for a switch or a setting without numbers."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        spans = [_span(v["value"] if isinstance(v, dict) else v) for v in value]
        spans = [s for s in spans if s is not None]
        return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value), float(value)


def _check_value(method, name: str, value, where: str, source: str) -> None:
    """One parameter setting: a scalar, a gradient, or ``{filter, value}`` entries."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for k, entry in enumerate(value):
            at = f"{where}[{k}]"
            stray = [key for key in entry if key not in ("filter", "value")]
            if stray:
                raise ConfigError(
                    f"{source}: {at}: unknown key '{stray[0]}'; a filter entry has 'filter' "
                    "(a part of tensor names) and 'value'"
                )
            if "filter" in entry and not isinstance(entry["filter"], str):
                raise ConfigError(
                    f"{source}: {at}.filter: {entry['filter']!r} is not text; give a part of "
                    "the tensor names it applies to (or '*'), quoted"
                )
            if "value" not in entry:
                raise ConfigError(f"{source}: {at}: a filter entry has no 'value'; add one")
            _check_value(method, name, entry["value"], f"{at}.value", source)
        return
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{source}: {where}: an empty list; give a number or a gradient")
        if any(isinstance(v, list | dict) for v in value):
            raise ConfigError(
                f"{source}: {where}: a gradient is a list of numbers (or a list of "
                "{filter, value} entries), not a mix"
            )
        for k, v in enumerate(value):
            _check_value(method, name, v, f"{where}[{k}]", source)
        return
    problem = method.value_problem(name, value)
    if problem is not None:
        raise ConfigError(f"{source}: {where}: {problem}")


def resolve_setting(value: ParamValue, name: str, t: float):
    """A parameter's value for tensor ``name`` at gradient position ``t``, as mergekit reads it.

    Scalars are themselves; a list of numbers is a gradient, interpolated at ``t``; a list of
    ``{filter, value}`` entries gives the first entry that applies (filter absent, ``*``, or a
    substring of ``name``), resolved in turn; None when no entry applies.
    """
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, bool | int | float):
        return value
    if not value:
        return None
    if all(isinstance(v, dict) for v in value):
        for entry in value:
            flt = entry.get("filter")
            if flt is None or flt == "*" or (name and str(flt) in name):
                if "value" not in entry:
                    raise ConfigError(f"parameter for '{name}': a filter entry has no 'value'")
                return resolve_setting(entry["value"], name, t)
        return None
    if all(isinstance(v, bool) for v in value):
        return value[int(t * (len(value) - 1))]
    grad = [float(v) for v in value]
    if len(grad) == 1:
        return grad[0]
    return float(np.interp(t * (len(grad) - 1), np.arange(len(grad)), grad))
