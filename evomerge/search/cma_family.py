"""The CMA-ES family: what ``cmaes`` (pycma) and ``sep_cmaes`` (explicit diagonal state) share.

Both are generational: ``ask`` proposes one whole generation of ``popsize`` candidates
whatever ``n`` the loop asks for (a run may end up to ``popsize - 1`` evaluations past its
budget), and ``tell`` accepts exactly that generation, told as minus the mean per-example
scores (CMA-ES minimises). Both start at the mean of the seed rows, keep the best candidate so
far (seeds included) and the last generation's scores, and report statistics over those rows.
A variant writes how it starts (``_start``), samples (``_generation``) and learns
(``_update``); its state dataclass ends with the shared fields ``last_scores``, ``best``,
``evaluations`` and ``next_id``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import BaseModel, ConfigDict, Field

from evomerge.search import racing
from evomerge.search.base import BestSoFar, Children, Proposal, score_stats


class CMAFamilyConfig(BaseModel):
    """The keys every CMA-ES variant has (each sets its own defaults and limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    sigma0: float = Field(gt=0, description="Initial step size.")
    popsize: int | None = Field(
        None, ge=2, description="Candidates per generation (null: 4 + floor(3 ln D))."
    )


class CMAFamily(BestSoFar):
    """A generational CMA-ES over a real vector; subclasses write the variant's parts."""

    def _start(self, mean: torch.Tensor) -> dict:
        """The variant's own state fields, from the ``(D,)`` float64 mean of the seeds."""
        raise NotImplementedError

    def _generation(self, state) -> torch.Tensor:
        """This state's whole generation as float32 rows (a pure function of seed and state)."""
        raise NotImplementedError

    def _update(self, state, objective: torch.Tensor):
        """The variant's fields after its generation's ``(popsize,)`` float64 objective."""
        raise NotImplementedError

    def variant_stats(self, state) -> dict:
        return {}

    def rank_settled(self, i: int, lo: torch.Tensor, hi: torch.Tensor) -> bool:
        """Whether child i's place in the generation's ranking is settled for every mean score
        in ``[lo_i, hi_i]`` as far as the update cares: by default (pycma, whose active
        update weighs every rank) its interval overlaps no other child's."""
        return racing.rank_isolated(i, lo, hi)

    def race(self, state, children: Children, low, high, done) -> list[bool]:
        """Racing's question: a child stops when its rank is settled and it cannot become the
        best so far; it is then told at its best case, which ranks it the same."""
        lo, hi = low.double().mean(dim=1), high.double().mean(dim=1)
        return [
            done[i]
            or not (
                self.rank_settled(i, lo, hi) and racing.cannot_be_best(i, lo, hi, state.best.mean)
            )
            for i in range(len(children.ids))
        ]

    # -- shared ------------------------------------------------------------------------------
    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor):
        """The search starts at the mean of the seed rows; the best seed is the best so far.
        Seeds take ids 0..k-1 and are not counted as evaluations."""
        k, e = seed_scores.shape
        return self.state_type(
            **self._start(seed_params.double().mean(dim=0)),
            last_scores=torch.zeros(0, e, dtype=torch.float32),
            best=self.best_of_seeds(seed_params, seed_scores),
            evaluations=0,
            next_id=k,
        )

    def _ask(self, state, n: int) -> Proposal:
        return Proposal(self._generation(state))

    def _tell(self, state, children: Children, scores: torch.Tensor):
        expected = self.ask(state, 0)
        if children.ids != expected.ids or not torch.equal(children.params, expected.params):
            raise ValueError(
                f"{self.config.name}: tell() needs the whole generation ask() gave for this state"
            )
        new = self._update(state, -scores.double().mean(dim=1))
        return replace(new, last_scores=scores.float().clone())

    def stats(self, state) -> dict:
        """Statistics over the last generation and the best so far."""
        rows = torch.cat([state.last_scores, state.best.scores[None]])
        return {**score_stats(rows), **self.variant_stats(state)}
