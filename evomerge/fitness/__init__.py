"""The ready fitness plug-ins: ``evomerge.fitness.digits``, ``evomerge.fitness.causal_lm``, ...

Their source is the top-level ``fitness/`` folder. The wheel installs that folder as this
package (see setup.py); in a source checkout this file, which the wheel leaves out, adds the
folder to the package's path, so ``import evomerge.fitness.digits`` works in both.
"""

from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent.parent / "fitness"
if _SOURCE.is_dir():
    __path__.append(str(_SOURCE))  # noqa: F821 (the package's own __path__)
