"""MAP: a cheap Pareto archive from quadratic surrogates (``strategy: {name: map}``).

MAP (Li et al. 2024, *Low-compute Model Merging with Amortized Pareto Fronts via Quadratic
Approximation*, arXiv:2406.07529) finds the trade-offs between tasks of a merge with few
evaluations: evaluate a few coefficient vectors, fit a quadratic of each task's score over the
coefficients (:mod:`~evomerge.search.surrogate`), take the surrogate's Pareto front with
NSGA-II (:mod:`~evomerge.search.nsga2`; cheap: no model is evaluated), then evaluate the
front's members for real. Here that is a loop over the run's evaluations:

1. **samples**: until ``samples`` children have been evaluated, children are uniform in
   ``bounds`` (child i from its own key, as random search's);
2. **rounds**: afterwards every ``ask`` refits the surrogates on every point evaluated so far
   (seeds included), runs NSGA-II on them (seeded by the run's seed and the evaluation count)
   and proposes up to ``batch`` members of the surrogate's front, evenly spaced along the
   first objective, to be verified.

Objectives are example groups' mean scores (``objectives``, as ``pareto``'s). Verified
children go into a :class:`~evomerge.search.archives.ParetoArchive` (what the run reports as
the front); ``best`` is the best mean score evaluated. The state keeps every evaluated point
and its objectives (the surrogate's data), so a resumed run refits the same surrogates and
makes the same children.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evomerge.core.errors import EvomergeError
from evomerge.core.keys import child_generator
from evomerge.search.archives import ArchiveState, ExampleGroups, ParetoArchive, empty_state
from evomerge.search.base import (
    BEST_CODEC,
    Best,
    BestSoFar,
    Children,
    Proposal,
    StrategyEntry,
    score_stats,
)
from evomerge.search.codec import Nested, codec
from evomerge.search.nsga2 import nsga2
from evomerge.search.random_search import check_bounds, to_float32
from evomerge.search.surrogate import fit_quadratic, num_terms, predict

__all__ = ["MapConfig", "MapState", "SurrogateFronts"]

#: more genes than this and the quadratic's terms (2,145 at 64) outgrow any evaluation budget
MAX_GENES = 64

#: keys of the NSGA-II runs are offset from the sampling keys, so they never share a stream
NSGA_KEY_OFFSET = 1 << 40


class MapConfig(BaseModel):
    """``strategy:`` section for ``name: map``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["map"] = "map"
    objectives: list[str] = Field(
        description="Example groups, one objective each (e.g. the tasks).", min_length=2
    )
    bounds: tuple[float, float] = Field(
        (0.0, 1.0), description="[low, high] of every gene (the merge coefficients)."
    )
    samples: int | None = Field(
        None,
        ge=1,
        description="Uniform children evaluated before the first fit; null: twice the "
        "quadratic's terms, (d + 1)(d + 2) for d genes. With the seeds at least (d + 1)(d + 2)/2.",
    )
    population: int = Field(64, ge=4, description="NSGA-II population on the surrogate.")
    generations: int = Field(60, ge=1, description="NSGA-II generations on the surrogate.")
    archive_size: int = Field(20, ge=2, description="Most verified members kept (crowding).")

    @field_validator("bounds")
    @classmethod
    def validate_bounds(cls, value):
        return check_bounds(value)


@dataclass(frozen=True)
class MapState:
    """Checkpoint names: ``points``, ``point_objectives`` (every evaluated point and its
    group means, seeds included: the surrogates' data), ``archive.*`` (the verified Pareto
    archive), ``best_*``; meta ``evaluations``, ``next_id``, ``archive``. (``objectives`` is
    the report's view of the archive's members, written beside them.)"""

    points: torch.Tensor
    point_objectives: torch.Tensor
    archive: ArchiveState = field(
        metadata=codec(Nested(ArchiveState, tensor_prefix="archive.", meta_key="archive"))
    )
    best: Best = field(metadata=BEST_CODEC)
    evaluations: int
    next_id: int


class SurrogateFronts(BestSoFar):
    """MAP's loop: uniform samples, then verified members of the surrogates' Pareto front."""

    state_type = MapState
    can_rescore = False  # the surrogates' data: every point evaluated, on its own examples

    def __init__(self, config: MapConfig, seed: int, groups=None):
        super().__init__(config, seed)
        self.groups = ExampleGroups(config.name, "objectives", config.objectives, groups)
        self.archive = ParetoArchive(self.groups, config.archive_size)
        self._gen = torch.Generator()

    def codec_context(self) -> dict:
        return {"space": self.space}

    def samples(self, dim: int) -> int:
        return self.config.samples if self.config.samples is not None else 2 * num_terms(dim)

    # -- state -------------------------------------------------------------------------------
    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor) -> MapState:
        k, e = seed_scores.shape
        dim = seed_params.shape[1]
        if dim > MAX_GENES:
            raise EvomergeError(
                f"strategy.name: map fits a quadratic over the genes ({num_terms(dim)} terms for "
                f"{dim} genes); use it on a recipe with at most {MAX_GENES} genes (recipe.groups)"
            )
        if k + self.samples(dim) < num_terms(dim):
            raise EvomergeError(
                f"strategy.samples: {self.samples(dim)} samples and {k} seeds cannot fit a "
                f"quadratic in {dim} genes ({num_terms(dim)} terms); set samples >= "
                f"{num_terms(dim) - k}"
            )
        archive = empty_state(self.config.archive_size, e)
        for i in range(k):
            archive, _ = self.archive.add(
                archive, i, self._member(seed_params[i]), seed_scores[i].float()
            )
        return MapState(
            points=seed_params.to(torch.float32).clone(),
            point_objectives=self.groups.scores(seed_scores).to(torch.float64),
            archive=archive,
            best=self.best_of_seeds(seed_params, seed_scores),
            evaluations=0,
            next_id=k,
        )

    def _member(self, genes: torch.Tensor):
        return self.space.copy(genes) if self.space is not None else genes.clone()

    def _ask(self, state: MapState, n: int) -> Proposal:
        dim = state.points.shape[1]
        left = self.samples(dim) - state.evaluations
        if left > 0:
            return Proposal(self._uniform(state, min(n, left), dim))
        return Proposal(self._front(state, max(n, 1), dim))

    def _uniform(self, state: MapState, n: int, dim: int) -> torch.Tensor:
        low, high = self.config.bounds
        rows = []
        for i in range(n):
            gen = child_generator(self.seed, state.evaluations + i, self._gen)
            rows.append(low + (high - low) * torch.rand(dim, generator=gen, dtype=torch.float64))
        return to_float32(torch.stack(rows), self.config.bounds)

    def surrogate(self, state: MapState) -> torch.Tensor:
        """The quadratics fitted to every evaluated point: ``(terms, objectives)``."""
        return fit_quadratic(state.points.double(), state.point_objectives)

    def _front(self, state: MapState, n: int, dim: int) -> torch.Tensor:
        coef = self.surrogate(state)
        gen = child_generator(self.seed, NSGA_KEY_OFFSET + state.evaluations, self._gen)
        cfg = self.config
        x, f = nsga2(
            lambda p: predict(coef, p), dim, cfg.bounds, cfg.population, cfg.generations, gen
        )
        order = torch.argsort(f[:, 0], stable=True)
        x = x[order]
        if len(x) > n:  # evenly spaced along the first objective, the ends included
            picks = torch.linspace(0, len(x) - 1, n, dtype=torch.float64).round().long()
            x = x[torch.unique_consecutive(picks)]
        return to_float32(x, cfg.bounds)

    def _tell(self, state: MapState, children: Children, scores: torch.Tensor) -> MapState:
        archive = state.archive
        buf = archive.scores.clone()
        for i, cid in enumerate(children.ids):
            archive, _ = self.archive.add(
                archive, cid, self._member(children.params[i]), scores[i].float(), buf
            )
        return replace(
            state,
            points=torch.cat([state.points, children.params.to(torch.float32)]),
            point_objectives=torch.cat(
                [state.point_objectives, self.groups.scores(scores).to(torch.float64)]
            ),
            archive=archive,
        )

    # -- reporting ---------------------------------------------------------------------------
    def stats(self, state: MapState) -> dict:
        filled = state.archive.filled
        out = score_stats(state.archive.scores[filled])
        out["front_size"] = len(filled)
        return out

    def checkpoint_extras(self, state: MapState) -> tuple[dict, dict]:
        tensors, meta = self.archive.report(state.archive)
        space = self.space.name if self.space is not None else None
        return tensors, {"space": space, **meta}


MAP_STRATEGY = StrategyEntry(MapConfig, SurrogateFronts, takes_groups=True)
