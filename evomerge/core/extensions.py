"""A config's ``extensions:``: the user's modules that register strategies and merge methods.

Each entry is a ``.py`` file (relative to the config's folder or the working directory) or an
importable module name. They are imported on the driver before the config's names are
validated, so a strategy or merge method defined only there validates, and on every worker
(local evaluator, each Ray actor) before the fitness plug-in is set up. A file travels as its
source text, read once on the driver, so workers on other nodes need no shared file system.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from evomerge.core.errors import ConfigError, EvomergeError, PluginError
from evomerge.core.plugins import module_from_source

FIELD = "extensions"
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
FIX = "give a .py file (relative to the config's folder or the working directory) or a module name"


@dataclass(frozen=True)
class Extension:
    """One resolved entry: a module name, or an absolute ``.py`` path and its source text."""

    field: str  # "extensions[i]", for messages
    target: str
    source: str | None = None

    @property
    def is_file(self) -> bool:
        return self.source is not None


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def resolve(raw, bases: Sequence[Path] = (), source: str = "config") -> list[str]:
    """The entries of ``extensions:`` checked: files made absolute, module names as given.

    A bad entry is one line naming ``extensions[i]`` and the fix.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: {FIELD}: expected a list, e.g. [my_ops.py, my_pkg.ops]")
    where = list(bases) or [Path.cwd()]
    out = []
    for i, entry in enumerate(raw):
        field = f"{FIELD}[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{source}: {field}: {entry!r} is not a file or module name; {FIX}")
        if is_file_entry(entry):
            path = Path(entry).expanduser()
            found = [path] if path.is_absolute() else [b / path for b in where]
            hit = next((p for p in found if p.is_file()), None)
            if hit is None or hit.suffix != ".py":
                looked = ", ".join(str(p.parent) for p in found)
                what = "is not a .py file" if hit is not None else f"not found (looked in {looked})"
                raise ConfigError(f"{source}: {field}: '{entry}' {what}; {FIX}")
            out.append(str(hit.resolve()))
        elif _MODULE.fullmatch(entry):
            out.append(entry)
        else:
            raise ConfigError(
                f"{source}: {field}: '{entry}' is neither a .py file nor a module name; {FIX}"
            )
    return out


def import_for_config(raw, bases: Sequence[Path], source: str) -> list[str]:
    """Resolve a config's ``extensions:`` and import them here; errors name the config file."""
    entries = resolve(raw, bases, source)
    try:
        import_entries(entries)
    except EvomergeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return entries


def package(entries: Sequence[str]) -> tuple[Extension, ...]:
    """Resolved entries with each file's source text, ready to ship to workers."""
    out = []
    for i, target in enumerate(entries):
        field = f"{FIELD}[{i}]"
        if not is_file_entry(target):
            out.append(Extension(field, target))
            continue
        try:
            data = Path(target).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{field}: cannot read {target} ({exc.strerror or exc}); {FIX}"
            ) from None
        try:
            out.append(Extension(field, target, data.decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{field}: {target}: byte {exc.start} is not UTF-8 text; save it as UTF-8"
            ) from None
    return tuple(out)


def load(extensions: Sequence[Extension]) -> list[ModuleType]:
    """Import each extension once per process (a file by its path and text), in order."""
    return [_load_one(ext) for ext in extensions]


def import_entries(entries: Sequence[str]) -> list[ModuleType]:
    """Read and import resolved entries here (the driver)."""
    return load(package(entries))


def _load_one(ext: Extension) -> ModuleType:
    if not ext.is_file:
        try:
            return importlib.import_module(ext.target)
        except ImportError as exc:
            if exc.name is not None and (ext.target + ".").startswith(exc.name + "."):
                raise ConfigError(
                    f"{ext.field}: no module named '{ext.target}'; install it, or {FIX}"
                ) from None
            raise _failed(ext, exc) from exc
        except (Exception, SystemExit) as exc:
            raise _failed(ext, exc) from exc
    try:
        return module_from_source(Path(ext.target), ext.source, "evomerge_extension")
    except (Exception, SystemExit) as exc:  # sys.exit() in an extension is a failed import
        raise _failed(ext, exc) from exc


def _failed(ext: Extension, exc: BaseException) -> PluginError:
    if isinstance(exc, SystemExit):
        what = f"sys.exit({exc.code!r})"
    else:
        what = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return PluginError(f"{ext.field}: importing {ext.target} failed: {what}", exit_code=2)
