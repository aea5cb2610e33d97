"""MAP-Elites (grid archive) and a Pareto archive, with M2N2's crossover and mutation.

Both keep M2N2's state, children and checkpoints (:class:`~evomerge.search.m2n2.M2N2`) and
change only the archive's two rules: which members become parents, and where a scored child
goes. Their niches are defined on *example groups* the fitness plug-in names
(``Fitness.example_groups()``: the digit classes and their halves on digits, the tasks of the
causal-LM fitness): a group's score is the member's mean score over its examples.

* ``map_elites``: a ``cells ** len(descriptors)`` grid over the descriptor groups' scores; a
  child takes its cell when the cell is empty or its mean score is higher (the occupant stays
  on ties). Parents: two members drawn uniformly from the filled cells.
* ``pareto``: members are the non-dominated set over the objective groups (no other member at
  least as good on every objective and better on one). A dominated child is dropped; a kept
  child evicts the members it dominates; when the archive is full, the member with the smallest
  crowding distance (NSGA-II's, boundary members infinite) goes, first on ties, which may be the
  child itself. Parents: two members drawn uniformly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field, field_validator

from evomerge.core.errors import EvomergeError
from evomerge.search.diversity import diversity
from evomerge.search.m2n2 import M2N2, ArchiveState, UncompetedConfig
from evomerge.search.random_search import check_bounds


class MapElitesConfig(UncompetedConfig):
    """``strategy:`` section for ``name: map_elites``."""

    name: Literal["map_elites"] = "map_elites"
    descriptors: list[str] = Field(
        description="Example groups whose mean scores place a member (e.g. [even, odd]).",
        min_length=1,
        max_length=3,
    )
    cells: int = Field(10, ge=1, description="Cells along each descriptor.")
    range: tuple[float, float] = Field(
        (0.0, 1.0), description="[low, high] of every descriptor (scores outside are clipped)."
    )

    @field_validator("range")
    @classmethod
    def validate_range(cls, value):
        return check_bounds(value)

    @property
    def archive_size(self) -> int:
        return self.cells ** len(self.descriptors)


class ParetoConfig(UncompetedConfig):
    """``strategy:`` section for ``name: pareto``."""

    name: Literal["pareto"] = "pareto"
    objectives: list[str] = Field(
        description="Example groups, one objective each (e.g. the tasks).", min_length=2
    )
    archive_size: int = Field(20, ge=2, description="Most members kept (crowding decides).")


class _GroupArchive(M2N2):
    """M2N2 with example-group objectives; subclasses define the archive rules."""

    group_field = "descriptors"

    def use_groups(self, groups: dict[str, list[int]] | None) -> None:
        """Take the plug-in's example groups (name -> example ids) the niches are built on."""
        wanted = list(getattr(self.config, self.group_field))
        groups = groups or {}
        missing = [g for g in wanted if g not in groups]
        if missing:
            have = ", ".join(groups) or "none (the plug-in defines no example_groups())"
            raise EvomergeError(
                f"strategy.{self.group_field}: no example group '{missing[0]}'; the fitness "
                f"plug-in has: {have}"
            )
        self._groups = [torch.as_tensor(groups[g], dtype=torch.long) for g in wanted]

    def group_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean score of each group: ``(M,)`` for one row, ``(P, M)`` for a matrix."""
        if not hasattr(self, "_groups"):
            raise EvomergeError(f"{self.config.name}: example groups were never given")
        return torch.stack([scores[..., g].double().mean(dim=-1) for g in self._groups], dim=-1)

    def _parents(self, state: ArchiveState, u_a: float, u_b: float) -> tuple[int, int]:
        filled = [i for i, m in enumerate(state.ids) if m >= 0]
        n = len(filled)
        return filled[min(int(u_a * n), n - 1)], filled[min(int(u_b * n), n - 1)]

    @staticmethod
    def _place(state: ArchiveState, slot: int, cid: int, params, scores, buf) -> ArchiveState:
        new_scores = state.scores.clone() if buf is None else buf
        new_scores[slot] = scores
        return replace(
            state,
            params=state.params[:slot] + (params,) + state.params[slot + 1 :],
            scores=new_scores,
            ids=state.ids[:slot] + (cid,) + state.ids[slot + 1 :],
        )

    def state_to_tensors(self, state: ArchiveState) -> tuple[dict[str, torch.Tensor], dict]:
        """M2N2's checkpoint plus derived views for reports (ignored when loading)."""
        tensors, meta = super().state_to_tensors(state)
        extra, extra_meta = self._report_tensors(state)
        return {**tensors, **extra}, {**meta, **extra_meta}

    def stats(self, state: ArchiveState) -> dict:
        filled = torch.tensor([i >= 0 for i in state.ids])
        means = state.scores.mean(dim=1)[filled]
        return {
            "archive_size": int(filled.sum()),
            "fitness": {
                "min": means.min().item(),
                "mean": means.mean().item(),
                "max": means.max().item(),
            },
            "train_score": {"mean": means.mean().item(), "max": means.max().item()},
            "diversity": diversity(state.scores[filled]),
            **self._mutation_stats(state),
            **self._archive_stats(state, filled),
        }


class MapElites(_GroupArchive):
    """MAP-Elites on a grid of example-group scores."""

    group_field = "descriptors"

    def cell(self, scores: torch.Tensor) -> int:
        """The grid cell (row-major over the descriptors) of one member's scores."""
        low, high = self.config.range
        cells = self.config.cells
        index = 0
        for d in self.group_scores(scores).tolist():
            k = int((d - low) / (high - low) * cells)
            index = index * cells + min(max(k, 0), cells - 1)
        return index

    def _insert(self, state: ArchiveState, cid: int, params, scores, scores_buf=None):
        slot = self.cell(scores)
        if state.ids[slot] >= 0 and not bool(
            scores.double().mean() > state.scores[slot].double().mean()
        ):
            return state
        return self._place(state, slot, cid, params, scores, scores_buf)

    def _archive_stats(self, state: ArchiveState, filled: torch.Tensor) -> dict:
        means = state.scores.double().mean(dim=1)[filled]
        return {"coverage": float(filled.double().mean()), "qd_score": float(means.sum())}

    def _report_tensors(self, state: ArchiveState) -> tuple[dict, dict]:
        """Each cell's elite mean score (NaN where empty), and the grid's shape."""
        grid = state.scores.double().mean(dim=1)
        grid[torch.tensor([i < 0 for i in state.ids])] = float("nan")
        shape = [self.config.cells] * len(self.config.descriptors)
        return {"grid_fitness": grid}, {"grid_shape": shape}


def dominates(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a[i]`` dominates ``b`` (at least as good everywhere, better somewhere), per row."""
    return (a >= b).all(dim=-1) & (a > b).any(dim=-1)


def crowding(objs: torch.Tensor) -> torch.Tensor:
    """NSGA-II crowding distance of each row of ``(P, M)`` objectives (boundaries infinite)."""
    p, m = objs.shape
    out = torch.zeros(p, dtype=torch.float64)
    if p <= 2:
        return out.fill_(float("inf"))
    for j in range(m):
        order = torch.argsort(objs[:, j], stable=True)
        col = objs[order, j]
        span = (col[-1] - col[0]).item()
        out[order[0]] = out[order[-1]] = float("inf")
        if span > 0:
            out[order[1:-1]] += (col[2:] - col[:-2]) / span
    return out


class Pareto(_GroupArchive):
    """A bounded Pareto archive over example-group objectives."""

    group_field = "objectives"

    def _insert(self, state: ArchiveState, cid: int, params, scores, scores_buf=None):
        filled = [i for i, m in enumerate(state.ids) if m >= 0]
        child = self.group_scores(scores)
        if filled:
            objs = self.group_scores(state.scores[filled])
            if bool(dominates(objs, child).any()):
                return state
            beaten = [filled[i] for i, d in enumerate(dominates(child, objs).tolist()) if d]
        else:
            beaten = []
        buf = state.scores.clone() if scores_buf is None else scores_buf
        for slot in beaten:  # evict what the child dominates
            buf[slot] = 0.0
            state = replace(
                state,
                params=state.params[:slot] + (None,) + state.params[slot + 1 :],
                ids=state.ids[:slot] + (-1,) + state.ids[slot + 1 :],
            )
        empty = [i for i, m in enumerate(state.ids) if m < 0]
        if empty:
            return self._place(state, empty[0], cid, params, scores, buf)
        rows = torch.cat([self.group_scores(buf), child[None]])
        drop = int(torch.argmin(crowding(rows)))  # first of the least crowded
        if drop == len(state.ids):
            return replace(state, scores=buf)
        return self._place(state, drop, cid, params, scores, buf)

    def _archive_stats(self, state: ArchiveState, filled: torch.Tensor) -> dict:
        return {"front_size": int(filled.sum())}

    def _report_tensors(self, state: ArchiveState) -> tuple[dict, dict]:
        """The members' objectives (members x objectives), for the report's front plot."""
        filled = [i for i, m in enumerate(state.ids) if m >= 0]
        return {"objectives": self.group_scores(state.scores[filled])}, {
            "objective_names": list(self.config.objectives)
        }
