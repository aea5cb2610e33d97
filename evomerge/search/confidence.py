"""Confidence intervals for the mean of a finite population sampled without replacement.

Approximate racing (:mod:`~evomerge.search.approximate_racing`) bounds a child's mean score
by them: a child's ``N`` per-example scores are a finite population in ``[a, b]`` (width
``R = b - a``), and a race reads them in a uniformly shuffled order, so after ``n`` of them
they are a sample drawn without replacement. With the sample mean ``m`` and the sample
standard deviation ``s`` (``1/n`` normalisation), the mean ``mu`` of all ``N`` obeys, each
one-sided statement failing with probability at most ``d``:

* Hoeffding-Serfling (Serfling 1974, sharpened by Bardenet & Maillard 2015)::

      m - mu <= R * sqrt(rho_n * log(1/d) / (2 n))

* empirical Bernstein-Serfling (Bardenet & Maillard 2015, "Concentration inequalities for
  sampling without replacement", Bernoulli 21(3)), stated there with probability at least
  ``1 - 5 d'``, so here with ``d' = d / 5``::

      m - mu <= s * sqrt(2 rho_n log(5/d) / n) + kappa * R * log(5/d) / n,
      kappa = 7/3 + 3/sqrt(2)

with the finite-population factor ``rho_n = 1 - (n - 1)/N`` for ``n <= N/2`` and
``(1 - n/N)(1 + 1/n)`` above (zero at ``n = N``, where the sample is the population). Both
hold for ``mu - m`` too (the population ``-x``). The first is the tighter on a few hundred
0/1 scores (its constants are small), the second where scores vary little and many are seen
(its leading term scales with ``s``); :func:`mean_radius` takes the smaller of the two, each
side of each given a quarter of the failure probability (a union bound), so the interval
``m -+ radius`` holds with probability at least ``1 - failure``.
"""

from __future__ import annotations

import math

import torch

KAPPA = 7.0 / 3.0 + 3.0 / math.sqrt(2.0)


def rho(n: int, num: int) -> float:
    """Bardenet & Maillard's finite-population factor ``rho_n`` for ``n`` of ``num``."""
    if n <= num / 2:
        return 1.0 - (n - 1) / num
    return (1.0 - n / num) * (1.0 + 1.0 / n)


def hoeffding_serfling(n: int, num: int, width: float, failure: float) -> float:
    """One-sided Hoeffding-Serfling deviation of the mean of ``n`` of ``num`` values."""
    return width * math.sqrt(rho(n, num) * math.log(1.0 / failure) / (2.0 * n))


def bernstein_serfling(std: torch.Tensor, n: int, num: int, width: float, failure: float):
    """One-sided empirical Bernstein-Serfling deviation for each sample standard deviation in
    ``std`` (``1/n`` normalisation), failing with probability at most ``failure``."""
    log = math.log(5.0 / failure)
    return std * math.sqrt(2.0 * rho(n, num) * log / n) + KAPPA * width * log / n


def mean_radius(known: torch.Tensor, num: int, width: float, failure: float) -> torch.Tensor:
    """``(R,)``: for each row of ``known`` (``(R, n)`` scores, a shuffled sample of ``num``),
    a radius around its mean that holds the population mean on both sides with probability at
    least ``1 - failure``: the smaller of the two bounds, each side of each given a quarter."""
    n = known.shape[1]
    std = known.double().std(dim=1, unbiased=False)
    part = failure / 4.0
    bernstein = bernstein_serfling(std, n, num, width, part)
    return bernstein.clamp(max=hoeffding_serfling(n, num, width, part))


def rest_interval(known: torch.Tensor, num: int, low: float, high: float, failure: float):
    """``(lo, hi)``, each ``(R,)`` float64: where the mean of each row's ``num - n`` unscored
    values lies when its population mean lies within :func:`mean_radius` of its sample mean
    (``mu = (n m + (num - n) rest) / num``, so the rest's radius is ``num / (num - n)`` times
    the population's), clipped to the score range ``[low, high]``."""
    n = known.shape[1]
    mean = known.double().mean(dim=1)
    radius = mean_radius(known, num, high - low, failure) * num / (num - n)
    return (mean - radius).clamp(min=low), (mean + radius).clamp(max=high)
