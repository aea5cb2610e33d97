"""The ready plug-ins and configs that ship with evomerge, found by name.

In a wheel they are ``evomerge/fitness/`` and ``evomerge/configs/``; in a source checkout the
top-level ``fitness/`` and ``configs/`` folders (setup.py maps one onto the other). So
``plugin: digits`` and ``evomerge run quickstart`` work the same from a clone and from
``pip install evomerge``, and a file dropped into either folder is found without a list.
Plug-in names are a :class:`~evomerge.core.registry.Registry` (:func:`registry`), where a
renamed module keeps its old name (:data:`RENAMED`).
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import yaml

from evomerge.core.errors import ConfigError, PluginError
from evomerge.core.registry import Registry

_PACKAGE = Path(__file__).resolve().parent.parent  # the evomerge package
MODULE_PREFIX = "evomerge.fitness."
#: Bundled plug-in modules that were renamed: old name -> new name. The old name keeps working
#: everywhere a bundled plug-in is named (``lm_eval``, ``evomerge.fitness.lm_eval:LmEval``,
#: ``fitness/lm_eval.py:LmEval``); ``lm_eval`` was renamed so that it cannot shadow the
#: lm-evaluation-harness package of the same name.
RENAMED = {"lm_eval": "lm_harness"}


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


class BundledPlugins(Registry[type]):
    """The bundled plug-in classes by name, each a lazy ``evomerge.fitness.<module>:<Class>``
    entry; :meth:`target` says where one lives without importing it."""

    def target(self, name: str) -> str:
        """``"evomerge.fitness.<module>:<Class>"`` of entry ``name``, nothing imported."""
        entry = self._entries[name]
        return entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"


def registry() -> BundledPlugins:
    """Every module of the bundled folder with one plug-in class, under its own name, and the
    old names of renamed modules (:data:`RENAMED`) as entries for their new ones.

    Made from the folder on each call (files read, none run), so a dropped-in file counts.
    """
    found = BundledPlugins("bundled plug-in", "fitness.plugin")
    for module, path in plugins().items():
        cls = _fitness_class(path)
        if cls:
            found.register(module, f"{MODULE_PREFIX}{module}:{cls}")
    for old, new in RENAMED.items():
        if new in found and old not in found:
            found.register(old, found.target(new))
    return found


def renamed_file(path: Path) -> Path | None:
    """The bundled file that ``path`` named before its module was renamed, else None.

    ``fitness/lm_eval.py`` (relative, as configs write it) and ``<bundled folder>/lm_eval.py``
    (absolute, as a run directory's ``config.yaml`` records it) are ``lm_harness.py`` now.
    """
    path = Path(path)
    new = RENAMED.get(path.stem)
    if new is None or path.suffix != ".py" or path.is_file():
        return None
    if path.is_absolute():
        named = path.parent.resolve() == fitness_dir().resolve()
    else:
        named = path.parent.as_posix() == "fitness"
    new_file = fitness_dir() / f"{new}.py"
    return new_file if named and new_file.is_file() else None


def plugin_spec(spec: str, field: str = "fitness.plugin") -> str:
    """A bundled plug-in as a file spec (``/.../fitness/digits.py:Digits``); other specs as given.

    Accepts a bare name (``digits``, ``causal-lm``) and ``evomerge.fitness.NAME[:Class]``,
    looked up in :func:`registry` (old names of renamed modules too). The file spec works from
    a checkout and a wheel alike and lets Ray ship the source to workers.
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
    files, named = plugins(), registry()
    if module in named:
        found_module, _, default = named.target(module).partition(":")
        module = found_module[len(MODULE_PREFIX) :]
        name = name or default
    elif module not in files:
        close = difflib.get_close_matches(module, list(named) or list(files), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise PluginError(
            f"{field}: '{spec}' is not a bundled plug-in; {hint}bundled: "
            f"{', '.join(files) or 'none'} (or give 'path/to/file.py:Class' or "
            "'package.module:Class')",
            exit_code=2,
        )
    if not name:
        raise PluginError(
            f"{field}: {files[module]} has no single plug-in class; name it: "
            f"'{MODULE_PREFIX}{module}:ClassName'",
            exit_code=2,
        )
    return f"{files[module]}:{name}"


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
