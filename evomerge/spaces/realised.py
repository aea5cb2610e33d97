"""Candidates made concrete on a worker, and which plug-in calls score them.

A space's worker realises a batch either as flat parameter rows, which the plug-in's
``score`` and ``metrics`` take, or by writing one candidate into the plug-in's resident model,
which ``score_loaded`` and ``metrics_loaded`` then see. ``scorer`` is the worker's checked
access to the plug-in (:class:`~evomerge.runtime.host.FitnessHost`): it turns every failure of
the plug-in into one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FlatRows:
    """``(B, N)`` float32 parameter rows (numpy or torch) the plug-in scores in one call."""

    rows: torch.Tensor | np.ndarray

    @property
    def count(self) -> int:
        return len(self.rows)

    def score(self, scorer, example_ids):
        return scorer.score_rows(self.rows, example_ids)

    def metrics(self, scorer):
        return scorer.metrics_row(self.rows[0])


@dataclass
class Loaded:
    """One candidate, already written into the plug-in's resident model."""

    count: int = 1

    def score(self, scorer, example_ids):
        return scorer.score_loaded(example_ids)

    def metrics(self, scorer):
        return scorer.metrics_loaded()
