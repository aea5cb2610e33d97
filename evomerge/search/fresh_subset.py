"""Fresh subsets: the examples change every ``refresh_every`` evaluations, and the members the
strategy keeps are re-scored on each new subset.

A fixed subset lets a search select for the examples it happens to hold: members lucky on them
crowd out the rest, and the held-out figure drops the longer the search runs (BENCHMARKS.md,
"Subset fitness"). Here subset ``e`` (drawn from the run's seed and ``e``) serves the children
asked at evaluations ``[e * R, (e + 1) * R)``. When the run enters a new subset, before any
child is asked, the strategy's members (``members_to_rescore``: an archive's members, the best
so far) are scored on it and their old scores replaced (``rescored``; MAP-Elites and Pareto
archives re-place them), so every score a strategy compares is on the same examples, and a
member that survives keeps being measured on new ones. The re-scoring is counted in the
example evaluations (members x size per subset), not in the candidate evaluations.

Every subset holds the same number of examples of each stratum in the same columns (stratum
by stratum, ascending ids inside each), so niches and objectives built on example groups keep
their columns from one subset to the next: with example groups, ``stratify: task`` is
required. A checkpoint records the subset its state's scores are on (meta ``subset_epoch``),
so a resume continues on the same examples: the result is that of the uninterrupted run.
"""

from __future__ import annotations

import torch

from evomerge.core.errors import ConfigError
from evomerge.core.keys import key
from evomerge.search.schedules import Schedule, ScoreFn
from evomerge.search.subset_draw import draw_strata, standard_error, subset_groups

FRESH_STREAM = (1 << 60) + 2  # key index of the fresh subsets' draws


def draw_fresh(num_examples: int, size: int, groups: dict | None, seed: int, epoch: int):
    """Subset ``epoch``'s example ids, stratum by stratum, and its ``(N_h, n_h, columns)``
    layout (the same columns for every ``epoch``)."""
    gen = torch.Generator().manual_seed(key(key(seed, FRESH_STREAM), epoch))
    parts, chosen = draw_strata(num_examples, size, groups, gen)
    ids, layout = [], []
    for part, picked in zip(parts, chosen, strict=True):
        layout.append((len(part), len(picked), list(range(len(ids), len(ids) + len(picked)))))
        ids.extend(picked)
    return torch.tensor(ids, dtype=torch.long), layout


def fresh_groups(section, info: dict) -> dict | None:
    """The groups the draws are stratified by, or one-line refusals of the section."""
    if section.refresh_every is None:
        raise ConfigError(
            "evaluation.refresh_every: fresh: true needs how many candidate evaluations each "
            "subset serves (e.g. 200; each new subset re-scores the strategy's members on it)"
        )
    groups = subset_groups(section, info)
    if groups is None and info.get("groups"):
        raise ConfigError(
            "evaluation.stratify: fresh: true needs stratify: task when the fitness plug-in "
            "names example groups (each new subset must hold as many of each group's examples, "
            "in the same columns, for niches built on them)"
        )
    return groups


def first_subset(section, info: dict, seed: int):
    """Subset 0 (what the seeds are scored on), ``(columns, layout)``."""
    groups = fresh_groups(section, info)
    return draw_fresh(int(info["num_examples"]), section.size, groups, seed, 0)


class FreshSubsetSchedule(Schedule):
    """Every candidate on the current subset; the strategy's members re-scored on each new
    one (see the module docstring)."""

    name = "subset"

    def __init__(self, num_examples: int, size: int, groups, seed: int, every: int):
        self.num_examples, self.size, self.groups = num_examples, size, groups
        self.seed, self.every = seed, every
        self._use(0, *self._draw(0))

    def _draw(self, epoch: int):
        return draw_fresh(self.num_examples, self.size, self.groups, self.seed, epoch)

    def _use(self, epoch: int, columns: torch.Tensor, layout) -> None:
        self.epoch, self.columns, self.layout = epoch, columns, layout

    def refresh(self, state, strategy, score: ScoreFn):
        epoch = state.evaluations // self.every
        if epoch == self.epoch:
            return state, 0
        columns, layout = self._draw(epoch)
        scores = torch.as_tensor(score(strategy.members_to_rescore(state), columns))
        state = strategy.rescored(state, scores)
        self._use(epoch, columns, layout)  # only now: an interrupted re-scoring changes nothing
        return state, int(scores.shape[0]) * len(columns)

    def evaluate(self, state, children, score: ScoreFn) -> tuple[torch.Tensor, int]:
        scores = torch.as_tensor(score(children.params, self.columns))
        return scores, int(scores.shape[0]) * len(self.columns)

    def standard_error(self, row: torch.Tensor) -> float:
        return standard_error(row, self.layout)

    def state_meta(self) -> dict:
        return {"subset_epoch": self.epoch}

    def resume(self, meta: dict) -> None:
        epoch = meta.get("subset_epoch", 0)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"subset_epoch {epoch!r} is not a subset number (an int >= 0)")
        self._use(epoch, *self._draw(epoch))


def build_fresh(section, strategy, info: dict, seed: int) -> FreshSubsetSchedule:
    groups = fresh_groups(section, info)
    if not getattr(strategy, "can_rescore", False):
        name = getattr(getattr(strategy, "config", None), "name", type(strategy).__name__)
        raise ConfigError(
            f"evaluation.fresh: strategy {name} keeps scores it cannot have re-scored on a new "
            "subset (see docs/strategy.md, can_rescore); use fresh: false"
        )
    num = int(info["num_examples"])
    return FreshSubsetSchedule(num, section.size, groups, seed, section.refresh_every)
