"""Make a fitness plug-in from its spec and options, refusing bad ones in one line.

Every place that runs a plug-in (a worker's :class:`~evomerge.runtime.host.FitnessHost`, the
statistics pass of the data-aware merges) makes it here, so a wrong class, rejected options or
a plug-in that exits while it is made give the same message and exit code wherever they occur.
"""

from __future__ import annotations

import inspect

from evomerge.core.errors import PluginError
from evomerge.core.fitness import Fitness
from evomerge.core.plugins import load_object


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception in one line (``sys.exit(code)`` for a SystemExit)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]


def load_fitness(
    spec: str, options: dict, source: str | None = None, field: str = "fitness.plugin"
) -> Fitness:
    """An instance of the :class:`evomerge.Fitness` subclass ``spec`` names, made with
    ``options`` (not set up yet); ``source`` stands in for a plug-in file on another node.

    ``field`` names the config key in messages (``statistics.plugin``); the options are its
    sibling key (``statistics.options``). Each failure is a :class:`PluginError` with exit code
    2: the config is wrong, not the run.
    """
    name = spec.rsplit("/", 1)[-1]
    options_field = f"{field.rpartition('.')[0] or field}.options"
    cls = load_object(spec, field=field, source=source)
    if not (isinstance(cls, type) and issubclass(cls, Fitness)):
        raise PluginError(f"{field}: {name} is not a subclass of evomerge.Fitness", exit_code=2)
    try:
        return cls(**options)
    except TypeError as exc:
        sig = inspect.signature(cls.__init__)
        raise PluginError(
            f"{options_field}: {name} rejected the options ({exc}); it accepts {sig}",
            exit_code=2,
        ) from None
    except (Exception, SystemExit) as exc:  # a plug-in calling sys.exit() is a bad plug-in
        raise PluginError(f"{options_field}: {name}: {describe(exc)}", exit_code=2) from None
