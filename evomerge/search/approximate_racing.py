"""Approximate racing (``evaluation: {schedule: race, mode: approximate, delta: 0.05}``): the
unscored examples' box is a confidence interval from the scores seen so far, not the whole
score range, so a child stops far sooner, at a small, user-set risk ``delta`` of stopping one
that would have mattered.

The box. After each stage but the last, each running child's ``n`` scores so far are a sample
drawn without replacement from its ``N`` scores (the batch's examples are read in an order
shuffled afresh for each batch, drawn from the run's seed and the batch's first child id, so
the order is independent of the children it races). :func:`~evomerge.search.confidence.
rest_interval` turns the empirical Bernstein-Serfling and Hoeffding-Serfling bounds
(Bardenet & Maillard 2015) into an interval ``[lo, hi]`` for the mean of the child's unscored
scores, and every unscored example's box is ``[lo, hi]``; the strategy's ``race`` is asked as
in exact mode and knows nothing of the mode.

Union bound. A race asks ``K = stages - 1`` times; each ask's two-sided interval is given
failure probability ``delta / K``. So for each child, with probability at least
``1 - delta`` over its batch's order, *at every stage* its true mean score over all ``N``
examples lies in the mean of its box (the box's mean is the sample mean -+ the radius).

What that covers. Every decision that depends on a child's mean score alone is, with
probability at least ``1 - delta`` per child, the one full scoring makes: CMA-ES / sep-CMA-ES
ranks and the best so far (cmaes, sep_cmaes, random), GA (``alpha = 0``: fitness is the raw
total), MAP-Elites' comparison with a cell's elite. So, given the search so far, a child that
would have mattered is lost with probability at most ``delta``. It does not cover decisions
that depend on *which* examples the child scores on: M2N2's competition fitness weighs example
``j`` by ``1 / z_j`` (rare examples weigh most), MAP-Elites' descriptors and Pareto's
objectives are means over example groups. There the flat box ``[lo, hi]`` stands in for the
unscored scores as a heuristic: the mean over all unscored examples is covered, the weighted
sum or a group's mean is not. For M2N2 the flat fill tends to err on the side of going on,
because a fractional score on an example no member solves earns the child its whole resource
(``s / z_j = 1``), but it is not a bound.

What a stopped child is told: its scores where scored, and its observed mean on every
unscored example. That vector lies in its box, so the strategy's promise covers it: a stopped
child stays out of an archive and leaves it unchanged, which thus holds only fully scored
members; a CMA-ES generation is ranked as with any value in the box, and the objective and the
history statistics record the child's estimated mean (an unbiased estimate under the shuffled
order), not a bound. The decision depends only on the scores, the run's seed and the children's
ids, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import torch

from evomerge.core.keys import key
from evomerge.search.confidence import rest_interval
from evomerge.search.racing import ORDER_STREAM

DEFAULT_DELTA = 0.05


class ApproximateBounds:
    """``mode: approximate``: confidence intervals for the unscored examples (see above)."""

    def __init__(self, section, num_examples: int, score_range, seed: int, checks: int):
        self.num_examples = num_examples
        self.low, self.high = score_range
        self.delta = DEFAULT_DELTA if section.delta is None else section.delta
        self.per_check = self.delta / max(checks, 1)
        self._seed = key(seed, ORDER_STREAM)

    def order(self, children) -> torch.Tensor:
        """A fresh shuffle of the examples for this batch (the run's seed, its first id)."""
        gen = torch.Generator().manual_seed(key(self._seed, children.ids[0]))
        return torch.randperm(self.num_examples, generator=gen)

    def unscored(self, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rest_interval(known, self.num_examples, self.low, self.high, self.per_check)

    def told(self, known: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The observed mean, clamped into the box (float rounding)."""
        return torch.minimum(torch.maximum(known.double().mean(dim=1), lo), hi)
