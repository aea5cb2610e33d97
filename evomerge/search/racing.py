"""Racing over examples: score candidates in stages and stop each one as soon as it cannot
matter to the search -- provably (``mode: exact``, here), or with high probability
(``mode: approximate``, :mod:`~evomerge.search.approximate_racing`). The modes are a registry
(:data:`~evomerge.search.schedules.RACE_MODES`): they differ only in the box they give a
child's unscored examples and in what a stopped child is told; the strategies do not know them.

Scores are per example and bounded (the plug-in's ``score_range``, default ``[0, 1]``), so
after any stage a candidate's unscored examples lie between ``low`` and ``high`` of that range:
the candidate's score vector lies in a known box (exact mode; approximate mode narrows the
unscored part to a confidence interval). The schedule asks the strategy, after each stage,
which candidates can still matter; the others stop.

The contract a strategy answers (``race``)::

    strategy.race(state, children, low, high, done) -> list[bool]

``low`` / ``high`` are ``(B, E)``: the known scores, and the box's ends where unscored;
``done[i]`` says child i is fully scored (``low[i] == high[i]``). ``False`` for child i is a
promise: *for every score vector in child i's box*, telling it leaves the search exactly where
its real scores would. The schedule then tells it a vector in its box (exact mode: ``high[i]``,
its best case). So in exact mode the archive, the best member, every later child and the
resume are bit-identical to full scoring, at fewer example evaluations. How each strategy
keeps the promise:

* archives (m2n2, ga, map_elites, pareto; :meth:`~evomerge.search.archives.Archive.can_matter`):
  the child provably stays out and leaves the archive unchanged (M2N2/GA: even with its
  best-case scores it is the least fit of the P+1 rows, see :func:`~evomerge.search.
  competition.surely_worst`; MAP-Elites: every cell it can land in holds a member at least as
  good as its best case; Pareto: a member dominates its best case). Children of one batch are
  told in order, so child i is judged once the children before it are settled.
* best-so-far strategies (random): the child cannot become the best so far.
* CMA-ES (cmaes, sep_cmaes): the update needs the ranking of the generation, so a child stops
  only when its rank is settled (:func:`rank_isolated`: its interval of mean score overlaps no
  other child's, so any value in it gives the same order; sep_cmaes only ranks its best
  ``mu``, so a child with ``mu`` others surely better stops too) and it cannot become the best
  so far. Its recorded objective is then its best case, not its value: the ES (and every
  generation it asks) is the same, its history statistics of that generation use the bound.

Stages: the examples in a shuffled order (exact mode: one, drawn from the run's seed, so every
stage samples every class or task; approximate: a fresh one per batch), ``first_stage``
examples, then ``growth`` times more each stage, at most ``max_stage`` (a sixteenth of them by
default: in a strong archive most children are settled only near the end, so late decisions
must come often). Every candidate still running is scored on the same stage's examples in one
evaluator call; in a space whose workers write one candidate into a model
(``realises_singly``: lineage, recipe) each child goes through all its stages before the next
instead (``order: child``, the default there), so it is written once (the worker keeps it
written between calls), not once a stage; a pool of several workers then scores one child at a
time, and ``order: stage`` spreads each stage over them at the price of the writes. The order
is the config's, never the evaluator's: local and Ray runs of one config stay identical.
"""

from __future__ import annotations

import torch

from evomerge.core.contracts import DeferredChildren
from evomerge.core.errors import ConfigError, PluginError
from evomerge.core.keys import key
from evomerge.search.schedules import RACE_MODES, Schedule, ScoreFn

ORDER_STREAM = 1 << 60  # key index of the shuffled example order


def stage_sizes(num_examples: int, first: int, growth: float, most: int | None) -> list[int]:
    """Examples per stage: ``first``, then ``growth`` times more each stage but at most
    ``most`` (None: a sixteenth of the examples), to the end."""
    most = most or -(-num_examples // 16)
    sizes, size, left = [], float(first), num_examples
    while left > 0:
        n = min(left, most, max(1, int(size)))
        sizes.append(n)
        left -= n
        size *= growth
    return sizes


def rank_isolated(i: int, lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """Child i's interval ``[lo_i, hi_i]`` of mean score lies strictly above or below every
    other child's: any value in it keeps the generation's order (ties included) unchanged."""
    others = torch.ones(len(lo), dtype=torch.bool)
    others[i] = False
    below = hi[i] < lo[others]
    above = lo[i] > hi[others]
    return bool((below | above).all())


def surely_better(i: int, lo: torch.Tensor, hi: torch.Tensor) -> int:
    """How many other children are surely (strictly) better than child i."""
    return int((lo > hi[i]).sum())


def cannot_be_best(i: int, lo: torch.Tensor, hi: torch.Tensor, best_mean: float) -> bool:
    """Child i, told at its best case, does not replace the best so far (``best_of``: the
    batch's first highest mean, kept only when strictly above ``best_mean``)."""
    return bool(hi[i] <= best_mean) or surely_better(i, lo, hi) > 0


class ExactBounds:
    """``mode: exact``: a child's unscored examples lie anywhere in the score range, and a
    stopped child is told its best case (the range's top there). One shuffled order of the
    examples, drawn from the run's seed, serves every batch."""

    def __init__(self, section, num_examples: int, score_range, seed: int, checks: int):
        self.low, self.high = score_range
        gen = torch.Generator().manual_seed(key(seed, ORDER_STREAM))
        self._order = torch.randperm(num_examples, generator=gen)

    def order(self, children) -> torch.Tensor:
        """The order the batch's examples are scored in."""
        return self._order

    def unscored(self, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``, each ``(R,)``: the box of each running child's unscored examples,
        from its ``(R, n)`` known scores."""
        r = known.shape[0]
        return torch.full((r,), self.low), torch.full((r,), self.high)

    def told(self, known: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """``(R,)``: the score a stopped child is told on each of its unscored examples (a
        value in its box, so the strategy's promise covers it)."""
        return hi


class RaceSchedule(Schedule):
    """Examples in growing stages; the strategy's ``race`` says who goes on, the mode's
    ``bounds`` (exact, or :mod:`~evomerge.search.approximate_racing`) where the unscored
    examples' scores lie."""

    name = "race"

    def __init__(self, strategy, num_examples: int, score_range, section, seed: int):
        self.strategy = strategy
        self.num_examples = num_examples
        self.low, self.high = (float(v) for v in score_range)
        self.sizes = stage_sizes(
            num_examples, section.first_stage, section.growth, section.max_stage
        )
        mode = RACE_MODES.get(section.mode)
        checks = len(self.sizes) - 1  # race() is asked after every stage but the last
        self.bounds = mode(section, num_examples, (self.low, self.high), seed, checks)
        # a space whose workers write one candidate into a model: each child through its
        # stages before the next, so it is written once, not once a stage
        order = section.order
        if order is None:
            order = "child" if getattr(strategy.space, "realises_singly", False) else "stage"
        self.by_child = order == "child"

    def _take(self, params, rows: list[int]):
        """The children in ``rows`` (a dense tensor, recipes, or the space's own batch)."""
        if isinstance(params, torch.Tensor):
            return params[torch.tensor(rows)]
        if isinstance(params, DeferredChildren):  # still recipes: workers build the rows
            return params.subset(rows)
        return self.strategy.space.pack([params[r] for r in rows])

    def _check(self, part: torch.Tensor) -> None:
        outside = (part < self.low) | (part > self.high)
        if bool(outside.any()):
            value = part[outside][0].item()
            raise PluginError(
                f"fitness: score {value} lies outside the score range [{self.low:g}, "
                f"{self.high:g}] racing bounds unscored examples by; declare the plug-in's "
                "score_range (or set evaluation.score_range), or use evaluation.schedule: full"
            )

    def evaluate(self, state, children, score: ScoreFn) -> tuple[torch.Tensor, int]:
        if self.by_child:
            return self._child_by_child(state, children, score)
        b, e = len(children.ids), self.num_examples
        order = self.bounds.order(children)
        low = torch.full((b, e), self.low, dtype=torch.float32)
        high = torch.full((b, e), self.high, dtype=torch.float32)
        told = {}  # stopped child -> (its unscored examples, the score told there)
        running, spent, seen = list(range(b)), 0, 0
        for n, size in enumerate(self.sizes):
            ids = order[seen : seen + size]
            seen += size
            params = children.params if len(running) == b else self._take(children.params, running)
            part = torch.as_tensor(score(params, ids)).to(torch.float32)
            self._check(part)
            rows = torch.tensor(running)[:, None]
            low[rows, ids] = part
            high[rows, ids] = part
            spent += len(running) * len(ids)
            if n == len(self.sizes) - 1:
                break
            rest = order[seen:]
            known = high[rows, order[:seen]]
            lo, hi = self.bounds.unscored(known)
            low[rows, rest] = lo.to(torch.float32)[:, None]
            high[rows, rest] = hi.to(torch.float32)[:, None]
            done = [False] * b
            verdict = self.strategy.race(state, children, low, high, done)
            fill = self.bounds.told(known, lo, hi).to(torch.float32)
            for k, i in enumerate(running):
                if not verdict[i]:
                    told[i] = (rest, fill[k])
            running = [i for i in running if verdict[i]]
            if not running:
                break
        scores = high
        for i, (rest, value) in told.items():
            scores[i, rest] = value
        return scores, spent

    def _child_by_child(self, state, children, score: ScoreFn) -> tuple[torch.Tensor, int]:
        """Child i through its stages, then child i + 1: the children before it are settled
        (fully scored: ``done``; or stopped), so the strategy's in-order walk reaches it. The
        same promise as stage by stage; a strategy that judges a child against the others'
        scores (CMA-ES's ranks) seldom stops one this way."""
        b, e = len(children.ids), self.num_examples
        order = self.bounds.order(children)
        low = torch.full((b, e), self.low, dtype=torch.float32)
        high = torch.full((b, e), self.high, dtype=torch.float32)
        done, spent = [False] * b, 0
        for i in range(b):
            params = self._take(children.params, [i])
            seen = 0
            for n, size in enumerate(self.sizes):
                ids = order[seen : seen + size]
                seen += size
                part = torch.as_tensor(score(params, ids)).to(torch.float32)
                self._check(part)
                low[i, ids] = high[i, ids] = part[0]
                spent += len(ids)
                if n == len(self.sizes) - 1:
                    done[i] = True
                    break
                rest = order[seen:]
                known = high[i : i + 1, order[:seen]]
                lo, hi = self.bounds.unscored(known)
                low[i, rest] = float(lo[0])
                high[i, rest] = float(hi[0])
                if not self.strategy.race(state, children, low, high, done)[i]:
                    high[i, rest] = float(self.bounds.told(known, lo, hi)[0])
                    break
        return high, spent


def build_race(section, strategy, info: dict, seed: int) -> RaceSchedule:
    """The racing schedule; refused in one line where the strategy cannot race or the scores
    are unbounded."""
    if not callable(getattr(strategy, "race", None)):
        name = getattr(strategy.config, "name", type(strategy).__name__)
        raise ConfigError(
            f"evaluation.schedule: race: strategy {name} does not say when a candidate can "
            "no longer matter (no race() method); use evaluation.schedule: full"
        )
    score_range = section.score_range or info.get("score_range")
    if score_range is None:
        raise ConfigError(
            "evaluation.schedule: race needs bounded scores, and the fitness plug-in declares "
            "no score_range; set evaluation.score_range: [low, high], or use schedule: full"
        )
    return RaceSchedule(strategy, int(info["num_examples"]), score_range, section, seed)
