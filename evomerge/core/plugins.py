"""Load user objects named as ``path/to/file.py:Name`` or ``package.module:Name``.

A file path lets users keep a fitness next to their data without making a package; a module
path lets them ship it in one. Only the named file or module is executed, never data files.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from evomerge.core import bundled
from evomerge.core.errors import PluginError


def split_spec(spec: str, field: str = "fitness.plugin") -> tuple[str, str]:
    """Split ``target:Name`` and check its shape."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise PluginError(
            f"{field}: '{spec}' is not 'path/to/file.py:ClassName' or 'package.module:ClassName'",
            exit_code=2,
        )
    return target, name


def is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def resolve_spec(spec: str, bases: list[Path] = (), field: str = "fitness.plugin") -> str:
    """Make a file spec absolute (so a run directory can be resumed from anywhere).

    A relative path is looked up in each of ``bases`` in turn (default: the working directory),
    then among the bundled plug-ins; a bundled name (``digits``) becomes its file.
    """
    spec = bundled.plugin_spec(spec, field)
    target, name = split_spec(spec, field)
    if not is_file_spec(target):
        return spec
    return f"{locate(Path(target).expanduser(), bases).resolve()}:{name}"


def locate(path: Path, bases: list[Path] = ()) -> Path:
    """The file a plug-in path names: an absolute path as it is, a relative one in the first
    of ``bases`` (default: the working directory) that has it, else in the bundled folder; a
    bundled file that was renamed is found under its new name (:data:`bundled.RENAMED`)."""
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [b / path for b in (bases or [Path.cwd()])] + [bundled.root() / path]
    found = next((c for c in candidates if c.is_file()), None)
    return found or bundled.renamed_file(path) or candidates[0]


def _load_file_module(path: Path, source: str | None, field: str) -> ModuleType:
    if source is None:
        if not path.is_file():
            raise PluginError(
                f"{field}: file {path} not found; give a path to a .py file that defines the class",
                exit_code=2,
            )
        source = _read_text(path, field)
    try:
        return module_from_source(path, source, "evomerge_plugin")
    except (Exception, SystemExit) as exc:  # a plug-in calling sys.exit() is a failed import
        raise PluginError(f"{field}: importing {path} failed: {type(exc).__name__}: {exc}") from exc


def module_from_source(path: Path, source: str, prefix: str) -> ModuleType:
    """Execute a user's file (its ``source``, read on the driver) as a module, once per process.

    The module's name carries a digest of its path and text, so the same file imported twice
    is one module, and an edited one a new module. A failed import leaves nothing behind and
    raises what the file raised (``SystemExit`` included).
    """
    digest = hashlib.sha1(f"{path}\n{source}".encode()).hexdigest()[:12]
    mod_name = f"{prefix}_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    module = ModuleType(mod_name)
    module.__file__ = str(path)
    sys.modules[mod_name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # the user's own code
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def load_object(spec: str, field: str = "fitness.plugin", source: str | None = None):
    """Return the object named by ``spec``; ``source`` stands in for a file on another node."""
    target, name = split_spec(bundled.plugin_spec(spec, field), field)
    if is_file_spec(target):
        path = Path(target)
        if source is None and not path.is_file():  # a renamed bundled file: its new name
            path = bundled.renamed_file(path) or path
        module = _load_file_module(path, source, field)
        where = target
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise PluginError(
                f"{field}: cannot import module '{target}' ({exc}); install it or give a file path",
                exit_code=2,
            ) from exc
        where = f"module {target}"
    if not hasattr(module, name):
        found = [
            n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")
        ]
        close = difflib.get_close_matches(name, found, n=1)
        hint = (
            f"did you mean '{close[0]}'?" if close else f"it defines: {', '.join(found) or 'none'}"
        )
        raise PluginError(f"{field}: {where} has no '{name}'; {hint}", exit_code=2)
    return getattr(module, name)


def read_source(spec: str) -> str | None:
    """The source text of a file plug-in, so remote workers need not share the file system."""
    target, _ = split_spec(spec)
    if is_file_spec(target) and Path(target).is_file():
        return _read_text(Path(target), "fitness.plugin")
    return None


def _read_text(path: Path, field: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PluginError(
            f"{field}: {path}: byte {exc.start} (0x{data[exc.start]:02x}) is not UTF-8 text; "
            "save the plug-in as UTF-8",
            exit_code=2,
        ) from None
