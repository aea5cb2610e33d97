"""evomerge: evolutionary model fusion.

The public surface: the fitness plug-in base class, the strategy registry, and the config
loader. Everything else is reachable through its module but may change.
"""

__version__ = "0.1.0"

from evomerge.core import moved as _moved  # noqa: E402

_moved.install()  # earlier module paths (evomerge.merge.recipe, ...) keep importing

from evomerge.core.fitness import Fitness  # noqa: E402

__all__ = ["Fitness", "STRATEGIES", "register_strategy", "__version__"]

_LAZY = {"STRATEGIES", "register_strategy"}  # from evomerge.search.registry, on first use


def __getattr__(name: str):
    """``evomerge.STRATEGIES`` and ``evomerge.register_strategy``, imported when first asked
    for, so ``import evomerge`` (every plug-in does it) imports no search strategy."""
    if name in _LAZY:
        from evomerge.search import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'evomerge' has no attribute '{name}'")
