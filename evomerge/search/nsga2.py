"""NSGA-II (Deb et al. 2002, *A fast and elitist multiobjective genetic algorithm: NSGA-II*):
a Pareto front of a cheap vector function in a box, here MAP's quadratic surrogates.

Maximises every objective. Each generation: binary tournaments on (front rank, crowding
distance) pick parents, simulated binary crossover (SBX, ``eta_c``) and polynomial mutation
(``eta_m``, each gene with probability 1/d) make as many children, and the best ``population``
of parents + children by rank, then crowding distance (largest first; the earlier row on ties),
survive. All randomness from one ``torch.Generator``; float64 throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evomerge.search.archives import crowding


def domination_matrix(objs: torch.Tensor) -> torch.Tensor:
    """``D[i, j]``: row i dominates row j (at least as good everywhere, better somewhere)."""
    a, b = objs[:, None, :], objs[None, :, :]
    return (a >= b).all(dim=-1) & (a > b).any(dim=-1)


def front_ranks(objs: torch.Tensor) -> torch.Tensor:
    """Each row's non-dominated front (0: the Pareto front), by repeated peeling."""
    dom = domination_matrix(objs)
    beaten_by = dom.sum(dim=0)
    ranks = torch.full((len(objs),), -1, dtype=torch.long)
    rank = 0
    while bool((ranks < 0).any()):
        front = (beaten_by == 0) & (ranks < 0)
        ranks[front] = rank
        beaten_by = beaten_by - dom[front].sum(dim=0)
        rank += 1
    return ranks


def _crowding_by_front(objs: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(objs), dtype=torch.float64)
    for r in torch.unique(ranks).tolist():
        rows = torch.nonzero(ranks == r).flatten()
        out[rows] = crowding(objs[rows])
    return out


def survivors(objs: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` rows NSGA-II keeps: by rank, then crowding distance (largest first)."""
    ranks = front_ranks(objs)
    crowd = _crowding_by_front(objs, ranks)
    # lexicographic sort: rank ascending, crowding descending, index ascending (stable)
    order = torch.argsort(-crowd, stable=True)
    order = order[torch.argsort(ranks[order], stable=True)]
    return order[:n]


def _sbx(p1, p2, eta, gen):
    u = torch.rand(p1.shape, generator=gen, dtype=torch.float64)
    beta = torch.where(u <= 0.5, (2 * u) ** (1 / (eta + 1)), (1 / (2 * (1 - u))) ** (1 / (eta + 1)))
    swap = torch.rand(p1.shape, generator=gen, dtype=torch.float64) < 0.5  # genes crossed
    beta = torch.where(swap, beta, torch.ones_like(beta))
    c1 = 0.5 * ((1 + beta) * p1 + (1 - beta) * p2)
    c2 = 0.5 * ((1 - beta) * p1 + (1 + beta) * p2)
    return c1, c2


def _mutate(x, low, high, eta, gen):
    u = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    delta = torch.where(
        u < 0.5, (2 * u) ** (1 / (eta + 1)) - 1, 1 - (2 * (1 - u)) ** (1 / (eta + 1))
    )
    hit = torch.rand(x.shape, generator=gen, dtype=torch.float64) < 1.0 / x.shape[1]
    return torch.where(hit, x + delta * (high - low), x)


def nsga2(
    objectives: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    bounds: tuple[float, float],
    population: int,
    generations: int,
    generator: torch.Generator,
    eta_c: float = 15.0,
    eta_m: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The final population's Pareto front: ``(points (F, dim), objectives (F, M))``, in
    population order. ``objectives`` maps ``(P, dim)`` points to ``(P, M)`` values."""
    low, high = bounds
    x = low + (high - low) * torch.rand(population, dim, generator=generator, dtype=torch.float64)
    f = objectives(x)
    for _ in range(generations):
        ranks = front_ranks(f)
        crowd = _crowding_by_front(f, ranks)
        pick = torch.randint(population, (2, population), generator=generator)
        a, b = pick[0], pick[1]
        a_wins = (ranks[a] < ranks[b]) | ((ranks[a] == ranks[b]) & (crowd[a] >= crowd[b]))
        parents = x[torch.where(a_wins, a, b)]
        half = population // 2 + population % 2
        p1, p2 = parents[0::2][:half], torch.roll(parents, -1, dims=0)[0::2][:half]
        c1, c2 = _sbx(p1, p2, eta_c, generator)
        children = torch.cat([c1, c2])[:population]
        children = _mutate(children, low, high, eta_m, generator).clamp_(low, high)
        both = torch.cat([x, children])
        fb = torch.cat([f, objectives(children)])
        keep = survivors(fb, population)
        x, f = both[keep], fb[keep]
    first = front_ranks(f) == 0
    return x[first], f[first]
