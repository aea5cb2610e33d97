"""The strategy contract: public ask/tell keep the books, strategies write ``_ask``/``_tell``.

evosax's pattern: a strategy object holds only its config and seed; the search state is an
explicit frozen dataclass, and that dataclass *is* the checkpoint (:mod:`.codec` writes it).
Every state has ``evaluations`` (children told so far: it names the checkpoint folder) and
``next_id`` (the id the next child gets). The public methods do that bookkeeping, so a strategy
only says how it proposes children and what it learns from their scores:

* ``ask(state, n)``: calls ``_ask(state, n)`` for a :class:`Proposal` and numbers the children
  ``next_id, next_id + 1, ...`` (a generational strategy may propose more or fewer than ``n``);
* ``tell(state, children, scores)``: calls ``_tell`` for the new state and counts the
  evaluations and ids used; :class:`BestSoFar` also keeps the best candidate seen.

Randomness comes from keys, not from a generator in the state: child ``i`` of a run draws from
``child_generator(seed, i)``, so a resumed run makes the same children.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel

from evomerge.search import codec, racing


@dataclass(frozen=True)
class Children:
    """Candidates asked from one state: their parameters, ids and parent ids (and, with
    adaptive mutation, each child's unscaled mutation steps)."""

    params: torch.Tensor
    ids: tuple[int, ...]
    parents: tuple[tuple[int, int], ...]
    steps: tuple | None = None


@dataclass(frozen=True)
class Proposal:
    """What ``_ask`` returns: the children's ``(B, N)`` genomes, their parent rows' ids
    (``None``: no parents) and anything ``_tell`` needs back about how they were made."""

    params: torch.Tensor
    parents: tuple[tuple[int, int], ...] | None = None
    steps: tuple | None = None


class Strategy:
    """Base class of the built-in strategies (and of yours; see docs/strategy.md).

    Subclasses set ``state_type`` (the frozen state dataclass) and write ``init``, ``_ask``,
    ``_tell``, ``best`` and ``stats``. ``needs_nonnegative_scores`` is True when negative
    per-example scores would break the search (resource competition); the run then refuses
    them in one line naming the candidate and example.
    """

    state_type: type
    needs_nonnegative_scores: bool = False
    #: the state's kept scores can be replaced by new ones on other examples
    #: (:meth:`members_to_rescore` / :meth:`rescored`): a subset schedule that draws fresh
    #: examples needs it
    can_rescore: bool = False

    def __init__(self, config: BaseModel, seed: int):
        self.config = config
        self.seed = seed
        self.space = None

    def use_space(self, space) -> None:
        """The run's genome space (:class:`~evomerge.core.contracts.Space`): archives make
        children in it and checkpoint its genomes; vector strategies (CMA-ES, random search)
        propose vectors themselves and only keep it."""
        self.space = space

    # -- the contract ------------------------------------------------------------------------
    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor):
        """The first state from the ``(K, N)`` seeds and their ``(K, E)`` scores; seeds take
        ids ``0..K-1`` and are not evaluations (``next_id = K``, ``evaluations = 0``)."""
        raise NotImplementedError

    def _ask(self, state, n: int) -> Proposal:
        raise NotImplementedError

    def _tell(self, state, children: Children, scores: torch.Tensor):
        raise NotImplementedError

    def best(self, state) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(id, genome, per-example scores)`` of the member a run reports and exports."""
        raise NotImplementedError

    def stats(self, state) -> dict:
        """History statistics: at least ``archive_size``, ``fitness: {min, mean, max}`` and
        ``train_score: {mean, max}`` (see :func:`score_stats`)."""
        raise NotImplementedError

    def members_to_rescore(self, state):
        """The candidates whose scores ``state`` keeps (an archive's members, the best so
        far), as one batch the evaluator scores (:attr:`can_rescore` strategies only)."""
        raise NotImplementedError

    def rescored(self, state, scores: torch.Tensor):
        """``state`` with the scores of :meth:`members_to_rescore`'s rows replaced by
        ``scores`` (their scores on new examples, one row each, in that order)."""
        raise NotImplementedError

    # -- bookkeeping -------------------------------------------------------------------------
    def ask(self, state, n: int) -> Children:
        """Children from ``state`` (a pure function of the seed and the state)."""
        proposal = self._ask(state, n)
        count = len(proposal.params)
        ids = tuple(range(state.next_id, state.next_id + count))
        parents = proposal.parents if proposal.parents is not None else ((-1, -1),) * count
        return Children(proposal.params, ids, parents, proposal.steps)

    def tell(self, state, children: Children, scores: torch.Tensor):
        """The state after the children's ``(B, E)`` scores; the old state is not modified."""
        new = self._tell(state, children, scores)
        n = len(children.ids)
        return replace(new, evaluations=state.evaluations + n, next_id=state.next_id + n)

    # -- checkpoints -------------------------------------------------------------------------
    def codec_context(self) -> dict:
        """What the state codec needs besides the state (e.g. the genome space)."""
        return {}

    def checkpoint_extras(self, state) -> tuple[dict[str, torch.Tensor], dict]:
        """Derived views written with the state for reports (ignored when loading)."""
        return {}, {}

    def state_to_tensors(self, state) -> tuple[dict[str, torch.Tensor], dict]:
        """Plain tensors + JSON-able meta: this is the checkpoint."""
        tensors, meta = codec.encode(state, self.codec_context())
        extra_tensors, extra_meta = self.checkpoint_extras(state)
        return {**tensors, **extra_tensors}, {**meta, **extra_meta}

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], meta: dict):
        """The inverse of :meth:`state_to_tensors`."""
        return codec.decode(self.state_type, tensors, meta, self.codec_context())


# -- the best candidate so far ---------------------------------------------------------------
@dataclass(frozen=True)
class Best:
    """The best candidate so far (by mean score; the earliest wins ties)."""

    id: int
    genes: torch.Tensor
    scores: torch.Tensor

    @property
    def mean(self) -> float:
        return float(self.scores.double().mean())


def best_of(ids, params: torch.Tensor, scores: torch.Tensor, current: Best | None) -> Best:
    """``current`` or the best of a batch, whichever scores higher (``current`` on ties)."""
    means = scores.double().mean(dim=1).nan_to_num(nan=-math.inf)  # a failed candidate never wins
    i = int(torch.argmax(means))
    if current is not None and not bool(means[i] > current.mean):
        return current
    return Best(int(ids[i]), params[i].to(torch.float32).clone(), scores[i].float().clone())


def score_stats(rows: torch.Tensor) -> dict:
    """History statistics over the rows a strategy keeps (fitness = mean score: no niches)."""
    means = rows.float().mean(dim=1)  # float32 like M2N2's: the best row's max is its metric
    low, avg, high = means.min().item(), means.mean().item(), means.max().item()
    return {
        "archive_size": int(rows.shape[0]),
        "fitness": {"min": low, "mean": avg, "max": high},
        "train_score": {"mean": avg, "max": high},
    }


#: The checkpoint codec of a ``best: Best`` field: ``best_genes``, ``best_scores``, ``best_id``.
BEST_CODEC = codec.codec(codec.Nested(Best, tensor_prefix="best_", meta_prefix="best_"))


class BestSoFar(Strategy):
    """A strategy whose state keeps ``best: Best``, the best candidate evaluated so far (seeds
    included): ``tell`` updates it, ``best`` reports it."""

    def tell(self, state, children: Children, scores: torch.Tensor):
        new = super().tell(state, children, scores)
        return replace(new, best=best_of(children.ids, children.params, scores, state.best))

    can_rescore = True

    def best(self, state) -> tuple[int, torch.Tensor, torch.Tensor]:
        return state.best.id, state.best.genes, state.best.scores

    def members_to_rescore(self, state):
        """The best so far: the one candidate whose scores later children are measured by."""
        return state.best.genes[None]

    def rescored(self, state, scores: torch.Tensor):
        best = Best(state.best.id, state.best.genes, scores[0].float().clone())
        return replace(state, best=best)

    def race(self, state, children: Children, low, high, done) -> list[bool]:
        """Racing's question (:mod:`~evomerge.search.racing`): a child that cannot become
        the best so far stops (a strategy whose ``_tell`` uses the scores says more)."""
        lo, hi = low.double().mean(dim=1), high.double().mean(dim=1)
        return [
            done[i] or not racing.cannot_be_best(i, lo, hi, state.best.mean)
            for i in range(len(children.ids))
        ]

    @staticmethod
    def best_of_seeds(seed_params: torch.Tensor, seed_scores: torch.Tensor) -> Best:
        return best_of(range(len(seed_params)), seed_params, seed_scores, None)


# -- the registry's entries ------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyEntry:
    """A registered strategy: its config model and ``factory(config, seed)``.

    ``takes_groups``: the factory also takes ``groups=`` (the fitness plug-in's example
    groups, name -> example ids) because its niches are built on them.
    """

    config: type[BaseModel]
    factory: Callable
    takes_groups: bool = False


def use_space(strategy, space) -> None:
    """Give ``strategy`` the run's space; a strategy written before :class:`Strategy` (a
    plain ``factory(config, seed)`` object on vectors) may have no ``use_space``."""
    method = getattr(strategy, "use_space", None)
    if method is not None:
        method(space)


def needs_nonnegative_scores(strategy) -> bool:
    """Whether ``strategy`` needs per-example scores >= 0.

    Strategies written before :class:`Strategy` said so with ``config.alpha > 0``.
    """
    declared = getattr(strategy, "needs_nonnegative_scores", None)
    if declared is None:
        return getattr(strategy.config, "alpha", 0.0) > 0
    return bool(declared)
