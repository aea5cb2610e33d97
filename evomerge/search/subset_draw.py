"""How a subset of the training examples is drawn, and the standard error of a mean on it.

With example groups the examples are split into strata (examples in the same groups share a
stratum: for digits, one per class) and each stratum gets its share of the size (largest
remainders, at least one each when the size allows), drawn without replacement inside it.

Standard error of a member's subset mean, sampling without replacement from N examples
(finite-population correction): ``sqrt((1 - n/N) * s**2 / n)`` with ``s**2`` the sample
variance (n - 1 in the denominator); stratified, the subset mean is ``sum_h (n_h/n) * mean_h``
and its error ``sqrt(sum_h (n_h/n)**2 * (1 - n_h/N_h) * s_h**2 / n_h)``.
"""

from __future__ import annotations

import math

import torch

from evomerge.core.errors import ConfigError


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


def draw_strata(num_examples: int, size: int, groups: dict | None, gen: torch.Generator):
    """The strata and each one's drawn example ids (ascending), ``size`` in all, in
    proportion to the strata's sizes (one stratum of every example without groups)."""
    parts = strata(num_examples, groups) if groups else [list(range(num_examples))]
    counts = allocate([len(p) for p in parts], size)
    chosen = []
    for part, n in zip(parts, counts, strict=True):
        pick = torch.randperm(len(part), generator=gen)[:n]
        chosen.append(sorted(part[int(j)] for j in pick))
    return parts, chosen


def subset_groups(section, info: dict) -> dict | None:
    """The example groups a section's draw is stratified by (None: a plain draw), or a
    one-line refusal."""
    num = int(info["num_examples"])
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
    return groups


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
