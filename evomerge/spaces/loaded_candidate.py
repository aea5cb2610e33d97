"""Which candidate the plug-in's resident model holds now, so writing the same one again is
skipped.

A worker that realises candidates by writing them into one resident model (lineage and recipe
spaces) is often asked for the same candidate in consecutive calls: racing scores a child in
stages, one call each. Writing it again costs a merge of the whole model (for an LLM, as much as
scoring it on dozens of examples) and changes nothing: the write is deterministic. The worker
notes what it wrote (a key of the genome's values: candidates arrive as new objects from Ray)
and forgets it before any write, so a failed write is never taken for a held candidate.
"""

from __future__ import annotations

from collections.abc import Hashable


class LoadedCandidate:
    """The key of the candidate the resident model holds (None: unknown)."""

    def __init__(self):
        self.key: Hashable | None = None

    def holds(self, key: Hashable) -> bool:
        return self.key is not None and self.key == key

    def writing(self) -> None:
        """Before a write: until it completes, the model holds no known candidate."""
        self.key = None

    def written(self, key: Hashable) -> None:
        self.key = key
