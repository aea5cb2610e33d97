"""The ready plug-ins and configs that ship with evomerge, found by name.

In a wheel they are ``evomerge/fitness/`` and ``evomerge/configs/``; in a source checkout the
top-level ``fitness/`` and ``configs/`` folders (setup.py maps one onto the other). So
``plugin: digits`` and ``evomerge run quickstart`` work the same from a clone and from
``pip install evomerge``, and a file dropped into either folder is found without a list.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import yaml

from evomerge.core.errors import ConfigError, PluginError

_PACKAGE = Path(__file__).resolve().parent.parent  # the evomerge package
MODULE_PREFIX = "evomerge.fitness."


def root() -> Path:
    """The folder holding ``fitness/`` and ``configs/``: the package, or the checkout."""
    return _PACKAGE if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent


def fitness_dir() -> Path:
    return root() / "fitness"


def configs_dir() -> Path:
    return root() / "configs"


def plugins() -> dict[str, Path]:
    """Bundled plug-in modules by name (``digits``, ``causal_lm``, ...)."""
    folder = fitness_dir()
    files = sorted(folder.glob("*.py")) if folder.is_dir() else []
    return {f.stem: f for f in files if not f.stem.startswith("_")}


def configs() -> dict[str, Path]:
    """Bundled run configs by name (files with a ``fitness`` section, so not cluster files)."""
    found = {}
    folder = configs_dir()
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        if isinstance(raw, dict) and "fitness" in raw:
            found[path.stem] = path
    return found


def _fitness_class(path: Path) -> str | None:
    """The plug-in class of a bundled module, read without running it: the class named like
    the module (``causal_lm`` -> ``CausalLM``), else the one public class based on Fitness."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]
    key = path.stem.replace("_", "").lower()
    named = [c.name for c in classes if c.name.lower() == key]
    if named:
        return named[0]
    based = [
        c.name
        for c in classes
        if any(getattr(b, "id", getattr(b, "attr", None)) == "Fitness" for b in c.bases)
    ]
    return based[0] if len(based) == 1 else None


def plugin_spec(spec: str, field: str = "fitness.plugin") -> str:
    """A bundled plug-in as a file spec (``/.../fitness/digits.py:Digits``); other specs as given.

    Accepts a bare name (``digits``, ``causal-lm``) and ``evomerge.fitness.NAME[:Class]``. The
    file spec works from a checkout and a wheel alike and lets Ray ship the source to workers.
    """
    target, sep, name = spec.rpartition(":")
    if not sep:
        target, name = spec, ""
    if target.startswith(MODULE_PREFIX):
        module = target[len(MODULE_PREFIX) :]
    elif not sep and target.replace("-", "_").isidentifier():
        module = target.replace("-", "_")
    else:
        return spec
    found = plugins()
    if module not in found:
        close = difflib.get_close_matches(module, list(found), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise PluginError(
            f"{field}: '{spec}' is not a bundled plug-in; {hint}bundled: "
            f"{', '.join(found) or 'none'} (or give 'path/to/file.py:Class' or "
            "'package.module:Class')",
            exit_code=2,
        )
    name = name or _fitness_class(found[module])
    if not name:
        raise PluginError(
            f"{field}: {found[module]} has no single plug-in class; name it: "
            f"'{MODULE_PREFIX}{module}:ClassName'",
            exit_code=2,
        )
    return f"{found[module]}:{name}"


def config_path(given: str | Path) -> Path:
    """``given`` when it is a file, else the bundled config of that name (``quickstart``,
    ``quickstart.yaml``, ``configs/quickstart.yaml``); one error line listing them if neither."""
    path = Path(given)
    if path.is_file():
        return path
    found = configs()
    plain = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs")
    if plain and path.suffix in ("", ".yaml") and path.stem in found:
        return found[path.stem]
    raise ConfigError(
        f"{given}: config file not found, nor a bundled config; bundled: {', '.join(found)}"
    )
