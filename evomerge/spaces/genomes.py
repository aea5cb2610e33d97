"""The spaces' earlier home (``evomerge.genome.spaces``), kept so old imports work.

New code imports :mod:`evomerge.spaces.dense` and :mod:`evomerge.spaces.lineage_space`.
"""

from evomerge.spaces.dense import DenseSpace
from evomerge.spaces.lineage_space import LineageBatch, LineageSpace

__all__ = ["DenseSpace", "LineageBatch", "LineageSpace"]
