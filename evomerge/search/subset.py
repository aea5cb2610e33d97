"""Subset fitness: every candidate, the seeds included, is scored on one fixed subset of the
training examples, and the estimate carries its standard error.

The subset (``evaluation.size`` examples) is drawn once from the run's seed, so a resume scores
the same columns. With ``stratify: task`` the examples are split into strata by the plug-in's
example groups (examples in the same groups share a stratum: for digits, one per class) and
each stratum gets its share of the size (largest remainders, at least one each when the size
allows), drawn without replacement inside it.

Strategies are told a ``(B, size)`` score matrix: only the scored columns, never invented
scores for the others. The run builds the strategy on the example groups restricted to those
columns (renumbered), so M2N2's competition, MAP-Elites descriptors and Pareto objectives all
work on the subset alike for every candidate. ``fresh: true`` draws a new subset every
``refresh_every`` evaluations and re-scores the strategy's members on it
(:mod:`~evomerge.search.fresh_subset`).
"""

from __future__ import annotations

import torch

from evomerge.core.errors import ConfigError
from evomerge.core.keys import key
from evomerge.search import fresh_subset
from evomerge.search.schedules import Schedule, ScoreFn
from evomerge.search.subset_draw import draw_strata, standard_error, subset_groups

SUBSET_STREAM = (1 << 60) + 1  # key index of the subset draw


def draw_subset(num_examples: int, size: int, groups: dict | None, seed: int):
    """Sorted example ids of the subset and the per-stratum ``(N_h, n_h, columns)``."""
    gen = torch.Generator().manual_seed(key(seed, SUBSET_STREAM))
    parts, chosen = draw_strata(num_examples, size, groups, gen)
    ids = sorted(i for c in chosen for i in c)
    col = {i: c for c, i in enumerate(ids)}
    layout = [(len(p), len(c), [col[i] for i in c]) for p, c in zip(parts, chosen, strict=True)]
    return torch.tensor(ids, dtype=torch.long), layout


class SubsetSchedule(Schedule):
    """Every candidate on the run's fixed subset, in one call to the evaluator."""

    name = "subset"

    def __init__(self, columns: torch.Tensor, layout, num_examples: int):
        self.columns = columns
        self.layout = layout
        self.num_examples = num_examples

    def evaluate(self, state, children, score: ScoreFn) -> tuple[torch.Tensor, int]:
        scores = torch.as_tensor(score(children.params, self.columns))
        return scores, int(scores.shape[0]) * len(self.columns)

    def standard_error(self, row: torch.Tensor) -> float:
        return standard_error(row, self.layout)


def subset_plan(section, info: dict, seed: int):
    """The subset a section asks for, ``(columns, layout)``, or one-line refusals."""
    if section.fresh:
        return fresh_subset.first_subset(section, info, seed)
    if section.refresh_every is not None:
        raise ConfigError(
            "evaluation.refresh_every: only with fresh: true (a fixed subset is never "
            "refreshed); remove it or set fresh: true"
        )
    groups = subset_groups(section, info)
    return draw_subset(int(info["num_examples"]), section.size, groups, seed)


def restrict_groups(groups: dict[str, list[int]], columns: torch.Tensor) -> dict:
    """The plug-in's groups as columns of the subset's score matrix."""
    col = {int(i): c for c, i in enumerate(columns.tolist())}
    out = {name: [col[int(i)] for i in ids if int(i) in col] for name, ids in groups.items()}
    empty = [name for name, ids in out.items() if groups[name] and not ids]
    if empty:
        raise ConfigError(
            f"evaluation.size: the subset of {len(columns)} examples holds none of example "
            f"group '{empty[0]}' (niches and objectives are built on the groups); raise the "
            "size or use stratify: task"
        )
    return out


def build_subset(section, strategy, info: dict, seed: int) -> SubsetSchedule:
    if section.fresh:
        return fresh_subset.build_fresh(section, strategy, info, seed)
    columns, layout = subset_plan(section, info, seed)
    return SubsetSchedule(columns, layout, int(info["num_examples"]))


def subset_columns(section, info: dict, seed: int) -> torch.Tensor:
    return subset_plan(section, info, seed)[0]


build_subset.fixed_columns = subset_columns  # the subset is known from the config alone
