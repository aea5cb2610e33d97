"""Pydantic validation errors as one line: ``file: a.b: what; hint`` with "did you mean".

Shared by every YAML a user writes (run configs, merge configs), so all of them name the key
and suggest the closest known one the same way.
"""

from __future__ import annotations

import difflib
import re
import typing

from pydantic import BaseModel, ValidationError


def _hint(model: type[BaseModel] | None, loc: tuple, err: dict) -> str:
    if err["type"] == "extra_forbidden" and model is not None:
        fields = _fields_at(model, tuple(err["loc"])[:-1])
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        known = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
        return f"unknown key; {known}"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "union_tag_invalid":
        return f"{err['msg']}"
    msg = err["msg"].removeprefix("Value error, ")  # a validator's own words, as they are
    return f"{msg} (got {err.get('input')!r})"


def _section_check(err: dict) -> tuple[str, str] | None:
    """A section validator's message that names one of the section's keys (``genes.x: ...``):
    that key and the message, so the line names the key rather than the whole section."""
    if err["type"] != "value_error" or not isinstance(err.get("input"), dict):
        return None
    error = (err.get("ctx") or {}).get("error")
    found = re.match(r"([A-Za-z_]\w*)((?:\.\w+)*): (.*)", str(error or ""), re.S)
    if found is None or found.group(1) not in err["input"]:
        return None
    return found.group(1) + found.group(2), found.group(3)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Keys of the section at ``loc`` (pydantic's, with a union's tag after its field)."""
    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            continue
        tagged = {_kind(m): m for m in _models_in(ann)}  # evaluator: local | ray, ...
        if parts and parts[0] in tagged:
            model = tagged[parts.pop(0)]
            continue
        return []
    return list(model.model_fields)


def _models_in(ann) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for arg in typing.get_args(ann) for m in _models_in(arg)]


def _kind(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if args else None


def format_validation(
    source: str, exc: ValidationError, model: type[BaseModel], prefix: tuple = ()
) -> str:
    """All errors of a ValidationError on one line: ``file: a.b: what; hint``."""
    parts = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _TAGS))
        path = ".".join(str(p) for p in prefix + loc) or "(top level)"
        inner = _section_check(err)
        if inner is not None:  # a section's own check naming one of its keys
            key, what = inner
            parts.append(f"{path + '.' if loc or prefix else ''}{key}: {what}")
            continue
        parts.append(f"{path}: {_hint(model, loc, err)}")
    return f"{source}: " + "; ".join(parts)


_TAGS = {"gaussian", "plugin", "local", "ray"}
