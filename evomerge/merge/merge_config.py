"""The one-shot merge config: evomerge's own YAML, or a mergekit YAML read as it is.

Both become one :class:`MergeSpec`. Parameter values may be a number, a gradient (a list of
numbers spread over the layers, as in mergekit) or a list of ``{filter, value}`` entries (the
first entry whose ``filter`` occurs in the tensor name wins; an entry without ``filter`` is the
default).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from .operators import get_merge_method

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ParamValue = float | bool | list[float] | list[dict[str, Any]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    path: str = Field(description="A .safetensors file or a Hugging Face folder.")
    params: dict[str, ParamValue] = Field({}, description="Per-model parameters (weight, ...).")


class Override(_Strict):
    match: str = Field(description="Regex on tensor names this override applies to.")
    params: dict[str, ParamValue] = {}
    model_params: list[dict[str, ParamValue]] | None = None

    @field_validator("match")
    @classmethod
    def _regex(cls, v: str) -> str:
        re.compile(v)
        return v


class MergeConfig(_Strict):
    """evomerge's own merge config."""

    method: str
    base: str | None = None
    models: list[ModelEntry] = Field(min_length=1)
    params: dict[str, ParamValue] = {}
    overrides: list[Override] = []
    dtype: str = Field("float32", description="Compute dtype: float32, bfloat16 or float16.")
    out_dtype: str | None = Field(None, description="Output dtype (default: dtype).")
    seed: int = Field(0, description="Seed of random methods (DARE).")
    max_shard_size: str = Field("5GB", description="Largest output shard, e.g. 2GB, 500MB.")

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


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"max_shard_size: '{text}' is not a size like 5GB or 500MB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
    scale |= {"GIB": 2**30}
    return int(float(m.group(1)) * scale[unit])


def from_mergekit(raw: dict, source: str) -> dict:
    """Translate a mergekit YAML mapping into evomerge's merge config mapping."""
    unsupported = sorted(
        set(raw)
        - {
            "merge_method",
            "base_model",
            "models",
            "parameters",
            "dtype",
            "out_dtype",
            "tokenizer_source",
            "random_seed",
        }
    )
    if unsupported:
        raise ConfigError(
            f"{source}: {unsupported[0]}: this mergekit key is not supported by 'evomerge merge' "
            "(supported: merge_method, base_model, models, parameters, dtype, out_dtype)"
        )
    method = raw.get("merge_method")
    base = raw.get("base_model")
    models = []
    for i, entry in enumerate(raw.get("models") or []):
        if not isinstance(entry, dict) or "model" not in entry:
            raise ConfigError(f"{source}: models[{i}]: expected a mapping with 'model'")
        if entry["model"] == base and _needs_base_or_slerp(method):
            continue  # the base is the reference point, not a task vector
        models.append({"path": entry["model"], "params": entry.get("parameters") or {}})
    out = {"method": method, "models": models, "params": raw.get("parameters") or {}}
    if base is not None and _needs_base_or_slerp(method):
        out["base"] = base
    for key in ("dtype", "out_dtype"):
        if raw.get(key) is not None:
            out[key] = raw[key]
    if raw.get("random_seed") is not None:
        out["seed"] = raw["random_seed"]
    return out


def _needs_base_or_slerp(method) -> bool:
    try:
        return get_merge_method(str(method)).needs_base or method == "slerp"
    except ValueError:
        return False


def load_merge_config(path: Path, raw: Any) -> MergeConfig:
    """Validate either format; one line naming the field on error."""
    from ..config import format_validation

    source = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the merge config must be a YAML mapping")
    if "merge_method" in raw:
        raw = from_mergekit(raw, source)
    try:
        cfg = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc, MergeConfig)) from None
    method = get_merge_method(cfg.method)
    if method.needs_base and cfg.base is None:
        raise ConfigError(f"{source}: base: {cfg.method} merges task vectors; name a base model")
    if cfg.method == "slerp" and (cfg.base is None or len(cfg.models) != 1):
        raise ConfigError(
            f"{source}: slerp merges two models: a base (t = 0) and one model (t = 1)"
        )
    for override in cfg.overrides:
        if override.model_params is not None and len(override.model_params) != len(cfg.models):
            raise ConfigError(
                f"{source}: overrides[{override.match}].model_params: one entry per model "
                f"({len(cfg.models)}) expected"
            )
    return cfg


def resolve_value(value: ParamValue, name: str, layer: int | None, num_layers: int):
    """A parameter's value for one tensor: scalar, gradient over layers, or name filters."""
    if isinstance(value, bool | int | float):
        return value
    if value and all(isinstance(v, dict) for v in value):
        default = None
        for entry in value:
            flt = entry.get("filter")
            if flt is None:
                default = entry.get("value")
            elif flt in name:
                return resolve_value(entry["value"], name, layer, num_layers)
        if default is None:
            raise ConfigError(f"parameter for '{name}': no filter matches and no default entry")
        return resolve_value(default, name, layer, num_layers)
    grad = [float(v) for v in value]
    if len(grad) == 1:
        return grad[0]
    pos = 0.0 if layer is None or num_layers <= 1 else layer / (num_layers - 1)
    return float(np.interp(pos * (len(grad) - 1), np.arange(len(grad)), grad))
