"""evomerge: evolutionary model fusion.

The public surface: the fitness plug-in base class, the strategy registry, and the config
loader. Everything else is reachable through its module but may change.
"""

__version__ = "0.1.0"

from evomerge.core import moved as _moved  # noqa: E402

_moved.install()  # earlier module paths (evomerge.merge.recipe, ...) keep importing

from evomerge.core.fitness import Fitness  # noqa: E402
from evomerge.search.registry import STRATEGIES, register_strategy  # noqa: E402

__all__ = ["Fitness", "STRATEGIES", "register_strategy", "__version__"]
