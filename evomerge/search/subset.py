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
work on the subset alike for every candidate. ``fresh: true`` (a new subset per batch) would
change the columns under the archive and is refused.

Standard error of a member's subset mean, sampling without replacement from N examples
(finite-population correction): ``sqrt((1 - n/N) * s**2 / n)`` with ``s**2`` the sample
variance (n - 1 in the denominator); stratified, the subset mean is ``sum_h (n_h/n) * mean_h``
and its error ``sqrt(sum_h (n_h/n)**2 * (1 - n_h/N_h) * s_h**2 / n_h)``.
"""

from __future__ import annotations

import math

import torch

from evomerge.core.errors import ConfigError
from evomerge.core.keys import key
from evomerge.search.schedules import Schedule, ScoreFn

SUBSET_STREAM = (1 << 60) + 1  # key index of the subset draw


def strata(num_examples: int, groups: dict[str, list[int]]) -> list[list[int]]:
    """Examples split by the set of groups each belongs to (sorted ids, ordered by first id)."""
    member: list[list[str]] = [[] for _ in range(num_examples)]
    for name in sorted(groups):
        for i in groups[name]:
            member[int(i)].append(name)
    by_sig: dict[tuple[str, ...], list[int]] = {}
    for i, names in enumerate(member):
        by_sig.setdefault(tuple(names), []).append(i)
    return sorted(by_sig.values(), key=lambda ids: ids[0])


def allocate(sizes: list[int], n: int) -> list[int]:
    """``n`` split over strata of ``sizes`` in proportion (largest remainders), at least one
    each where ``n`` allows, never more than a stratum holds."""
    total = sum(sizes)
    floor = 1 if n >= len(sizes) else 0
    share = [n * s / total for s in sizes]
    out = [min(s, max(floor, int(q))) for s, q in zip(sizes, share, strict=True)]
    order = sorted(range(len(sizes)), key=lambda h: (-(share[h] - int(share[h])), h))
    while sum(out) < n:
        for h in order:
            if sum(out) < n and out[h] < sizes[h]:
                out[h] += 1
    while sum(out) > n:  # floors of one pushed it over: take from the largest shares
        over = [h for h in range(len(sizes)) if out[h] > floor]
        h = max(over, key=lambda h: (out[h] - share[h], -h))
        out[h] -= 1
    return out


def draw_subset(num_examples: int, size: int, groups: dict | None, seed: int):
    """Sorted example ids of the subset and the per-stratum ``(N_h, n_h, columns)``."""
    gen = torch.Generator().manual_seed(key(seed, SUBSET_STREAM))
    parts = strata(num_examples, groups) if groups else [list(range(num_examples))]
    counts = allocate([len(p) for p in parts], size)
    chosen = []
    for part, n in zip(parts, counts, strict=True):
        pick = torch.randperm(len(part), generator=gen)[:n]
        chosen.append(sorted(part[int(j)] for j in pick))
    ids = sorted(i for c in chosen for i in c)
    col = {i: c for c, i in enumerate(ids)}
    layout = [(len(p), len(c), [col[i] for i in c]) for p, c in zip(parts, chosen, strict=True)]
    return torch.tensor(ids, dtype=torch.long), layout


def standard_error(row: torch.Tensor, layout) -> float:
    """Standard error of the subset mean of one member's ``row`` (see the module docstring)."""
    n = sum(n_h for _, n_h, _ in layout)
    var = 0.0
    for big, n_h, cols in layout:
        if n_h < 2 or n_h >= big:
            continue  # a fully scored stratum has no error; one example gives no variance
        s2 = row[cols].double().var(unbiased=True).item()
        var += (n_h / n) ** 2 * (1 - n_h / big) * s2 / n_h
    return math.sqrt(var)


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
    num = int(info["num_examples"])
    if section.fresh:
        raise ConfigError(
            "evaluation.fresh: true is not supported (a new subset per batch would change the "
            "archive's columns); use fresh: false, a fixed subset drawn from the run's seed"
        )
    if section.size is None or not 1 <= section.size <= num:
        raise ConfigError(
            f"evaluation.size: schedule subset needs a size from 1 to {num} (the plug-in's "
            f"training examples); got {section.size}"
        )
    groups = None
    if section.stratify == "task":
        groups = info.get("groups") or {}
        if not groups:
            raise ConfigError(
                "evaluation.stratify: task needs the fitness plug-in's example_groups(), and it "
                "names none; use stratify: none"
            )
    return draw_subset(num, section.size, groups, seed)


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
    columns, layout = subset_plan(section, info, seed)
    return SubsetSchedule(columns, layout, int(info["num_examples"]))


def subset_columns(section, info: dict, seed: int) -> torch.Tensor:
    return subset_plan(section, info, seed)[0]


build_subset.fixed_columns = subset_columns  # the subset is known from the config alone
