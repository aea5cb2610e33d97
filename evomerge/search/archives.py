"""Archives: which members a variation search keeps, and which of them become parents.

One contract, three siblings. An archive holds no state: it rules over the rows (``params``,
``scores``, ``ids``) of an :class:`ArchiveState`. ``add`` offers it one scored child and says
what became of it (:class:`Status`, as pyribs' archives do); ``sample_parents`` turns two
uniform numbers into two member rows.

* :class:`CompetitionArchive`: M2N2's natural niches (resource-shared fitness, the weakest of
  the P+1 rows leaves; parent B by attraction to parent A). ``alpha = 0`` with no attraction
  is the GA baseline.
* :class:`GridArchive`: MAP-Elites, one elite per cell of a grid over example-group scores.
* :class:`ParetoArchive`: the non-dominated set over example-group objectives, bounded by
  NSGA-II's crowding distance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum

import torch

from evomerge.core.errors import EvomergeError
from evomerge.search import adaptive_mutation as am
from evomerge.search import competition
from evomerge.search.codec import Custom, IntTuple, Nested, codec
from evomerge.search.competition_memo import CompetitionMemo


def _space_tensors(members, context: dict) -> dict:
    return context["space"].to_tensors(members)


def _space_members(tensors: dict, context: dict, decoded: dict) -> tuple:
    return context["space"].from_tensors(tensors, decoded["ids"])


@dataclass(frozen=True)
class ArchiveState:
    """A variation search's whole state. Rows of an empty slot: params None, scores zero,
    id -1. Checkpoint names: the space's tensors (``params`` or ``lineage.<row>.*``),
    ``scores``, ``ids``, ``mutation.*``; meta ``evaluations``, ``next_id``, ``mutation``."""

    params: tuple = field(metadata=codec(Custom(_space_tensors, _space_members)))
    scores: torch.Tensor
    ids: tuple[int, ...] = field(metadata=codec(IntTuple()))
    evaluations: int
    next_id: int
    mutation: am.MutationState | None = field(
        default=None,
        metadata=codec(Nested(am.MutationState, "mutation.", meta_key="mutation", optional=True)),
    )

    @property
    def filled(self) -> list[int]:
        """Rows that hold a member."""
        return [i for i, m in enumerate(self.ids) if m >= 0]


def empty_state(size: int, examples: int) -> ArchiveState:
    return ArchiveState(
        params=(None,) * size,
        scores=torch.zeros(size, examples, dtype=torch.float32),
        ids=(-1,) * size,
        evaluations=0,
        next_id=0,
    )


class Status(IntEnum):
    """What ``add`` did with a child (pyribs' numbering): false only when it was dropped."""

    NOT_KEPT = 0  # the archive is unchanged (but for members a Pareto child evicted)
    IMPROVED = 1  # it took a member's place (a better elite, a weaker or dominated member)
    NEW = 2  # it filled an empty slot or cell


@dataclass(frozen=True)
class MemberOf:
    """Row ``i`` of a batch as a member genome, made (a copy in the space) only when the
    archive keeps the child: most children are turned away."""

    space: object
    rows: object
    i: int

    def __call__(self):
        return self.space.copy(self.rows[self.i])


def place(state: ArchiveState, slot: int, cid: int, params, scores, buf) -> ArchiveState:
    """``state`` with the child in row ``slot``; its scores go into ``buf`` (a scores buffer
    shared by one ``tell``) or a copy. ``params`` may be a :class:`MemberOf`."""
    if isinstance(params, MemberOf):
        params = params()
    new_scores = state.scores.clone() if buf is None else buf
    new_scores[slot] = scores
    return replace(
        state,
        params=state.params[:slot] + (params,) + state.params[slot + 1 :],
        scores=new_scores,
        ids=state.ids[:slot] + (cid,) + state.ids[slot + 1 :],
    )


def uniform_pair(state: ArchiveState, u_a: float, u_b: float) -> tuple[int, int]:
    """Two rows drawn uniformly (independently) from the filled ones."""
    filled = state.filled
    n = len(filled)
    return filled[min(int(u_a * n), n - 1)], filled[min(int(u_b * n), n - 1)]


class Archive:
    """The contract. ``size`` rows; ``needs_nonnegative_scores`` when its rules break on
    negative scores."""

    size: int
    needs_nonnegative_scores = False

    def add(self, state: ArchiveState, cid: int, params, scores: torch.Tensor, buf=None):
        """Offer child ``cid``: returns ``(new state, Status)``."""
        raise NotImplementedError

    def sample_parents(self, state: ArchiveState, u_a: float, u_b: float) -> tuple[int, int]:
        """Rows of parents A and B from two uniform numbers in [0, 1)."""
        raise NotImplementedError

    def can_matter(self, state: ArchiveState, low: torch.Tensor, high: torch.Tensor) -> bool:
        """Racing (:mod:`~evomerge.search.racing`): False only when a child whose scores lie
        between ``low`` and ``high`` (per example) surely stays out *and* leaves the archive
        unchanged, whatever its scores in that box. The default never knows."""
        return True

    def fitness(self, scores: torch.Tensor) -> torch.Tensor:
        """Each row's fitness as the archive ranks it (history statistics)."""
        return scores.mean(dim=1)

    def rescored(self, state: ArchiveState, scores: torch.Tensor) -> ArchiveState:
        """``state`` with the filled rows' scores replaced by ``scores`` (one row each, in row
        order: their scores on new examples). The members stay where they are: an archive
        whose places depend on the scores re-places them (:func:`reseated`)."""
        new = state.scores.clone()
        new[state.filled] = scores.float()
        return replace(state, scores=new)

    def stats(self, state: ArchiveState, filled: torch.Tensor) -> dict:
        """Archive-specific history statistics (``coverage``, ``front_size``, ...)."""
        return {}

    def report(self, state: ArchiveState) -> tuple[dict, dict]:
        """Derived checkpoint views for the report (ignored when loading)."""
        return {}, {}


def reseated(archive: Archive, state: ArchiveState, scores: torch.Tensor) -> ArchiveState:
    """The filled rows offered again, in row order, to an empty archive with their new
    ``scores``: where a member stands (a cell, the front) follows from its scores, so new
    scores may move it, or drop it where another member now takes its place."""
    rows = state.filled
    new = empty_state(archive.size, scores.shape[1])
    for k, i in enumerate(rows):
        new, _ = archive.add(new, state.ids[i], state.params[i], scores[k].float())
    return replace(state, params=new.params, scores=new.scores, ids=new.ids)


class CompetitionArchive(Archive):
    """M2N2's archive: a child joins unless it is the least fit of the P+1 rows under
    resource competition (``alpha``), and the least fit row leaves."""

    def __init__(self, size: int, alpha: float, attraction: bool):
        self.size, self.alpha, self.attraction = size, alpha, attraction
        self._memo = CompetitionMemo(alpha)

    @property
    def needs_nonnegative_scores(self) -> bool:
        return self.alpha > 0

    def add(self, state, cid, params, scores, buf=None):
        # a tell's own buffer changes under it: its column sums are not remembered
        sums = None if state.scores is buf else self._memo.of(state.scores).sums
        worst = competition.worst_index(state.scores, scores, self.alpha, sums)
        if worst >= len(state.ids):
            return state, Status.NOT_KEPT
        status = Status.NEW if state.ids[worst] < 0 else Status.IMPROVED
        return place(state, worst, cid, params, scores, buf), status

    def sample_parents(self, state, u_a, u_b):
        """A ~ competition fitness; B ~ attraction to A (what B solves that A does not,
        weighted by scarcity), or fitness again when nobody adds anything to A."""
        memo = self._memo.of(state.scores)
        weights = memo.weights
        if not sum(weights) > 0:  # nobody scores anything: uniform over members
            weights = [float(i >= 0) for i in state.ids]
        a = competition.sample_index(weights, u_a)
        if self.attraction:
            g = memo.attraction_to(a)
            if sum(g) > 0:
                return a, competition.sample_index(g, u_b)
        return a, competition.sample_index(weights, u_b)

    def fitness(self, scores):
        return competition.fitness(scores, self.alpha)

    def can_matter(self, state, low, high):
        """Unless even its best case is the least fit of the P+1 rows."""
        return not competition.surely_worst(state.scores, high, self.alpha)


class ExampleGroups:
    """The example groups a niche archive is built on: ``field`` names them in the config
    (``descriptors``, ``objectives``); ``groups`` are the plug-in's (``None``: not given,
    e.g. when a run is only exported; then only scoring by group fails)."""

    def __init__(self, owner: str, field: str, wanted: list[str], groups: dict | None):
        self.owner, self.names = owner, list(wanted)
        self._index = None
        if groups is None:
            return
        missing = [g for g in self.names if g not in groups]
        if missing:
            have = ", ".join(groups) or "none (the plug-in defines no example_groups())"
            raise EvomergeError(
                f"strategy.{field}: no example group '{missing[0]}'; the fitness "
                f"plug-in has: {have}"
            )
        self._index = [torch.as_tensor(groups[g], dtype=torch.long) for g in self.names]

    def scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean score of each group: ``(M,)`` for one row, ``(P, M)`` for a matrix."""
        if self._index is None:
            raise EvomergeError(f"{self.owner}: example groups were never given")
        return torch.stack([scores[..., g].double().mean(dim=-1) for g in self._index], dim=-1)


class GridArchive(Archive):
    """MAP-Elites: a ``cells ** M`` grid over the descriptor groups' scores (clipped into
    ``range``); a child takes its cell when empty or when its mean score is higher (the
    occupant stays on ties). Parents: two filled cells, uniformly."""

    def __init__(self, groups: ExampleGroups, cells: int, bounds: tuple[float, float]):
        self.groups, self.cells, self.bounds = groups, cells, bounds
        self.size = cells ** len(groups.names)

    def cell(self, scores: torch.Tensor) -> int:
        """The grid cell (row-major over the descriptors) of one member's scores."""
        index = 0
        for k in self._coords(scores):
            index = index * self.cells + k
        return index

    def _coords(self, scores: torch.Tensor) -> list[int]:
        """The cell's coordinate along each descriptor (monotone in the group scores)."""
        low, high = self.bounds
        out = []
        for d in self.groups.scores(scores).tolist():
            k = int((d - low) / (high - low) * self.cells)
            out.append(min(max(k, 0), self.cells - 1))
        return out

    def can_matter(self, state, low, high):
        """Unless every cell its box can land in holds an elite at least as good as its best
        mean (the occupant stays on ties)."""
        best = high.double().mean()
        cells = [0]
        for a, b in zip(self._coords(low), self._coords(high), strict=True):
            cells = [c * self.cells + k for c in cells for k in range(a, b + 1)]
        for c in cells:
            if state.ids[c] < 0 or bool(best > state.scores[c].double().mean()):
                return True
        return False

    def add(self, state, cid, params, scores, buf=None):
        slot = self.cell(scores)
        if state.ids[slot] < 0:
            return place(state, slot, cid, params, scores, buf), Status.NEW
        if bool(scores.double().mean() > state.scores[slot].double().mean()):
            return place(state, slot, cid, params, scores, buf), Status.IMPROVED
        return state, Status.NOT_KEPT

    def sample_parents(self, state, u_a, u_b):
        return uniform_pair(state, u_a, u_b)

    def rescored(self, state, scores):
        return reseated(self, state, scores)

    def stats(self, state, filled):
        means = state.scores.double().mean(dim=1)[filled]
        return {"coverage": float(filled.double().mean()), "qd_score": float(means.sum())}

    def report(self, state):
        """Each cell's elite mean score (NaN where empty), and the grid's shape."""
        grid = state.scores.double().mean(dim=1)
        grid[torch.tensor([i < 0 for i in state.ids])] = float("nan")
        return {"grid_fitness": grid}, {"grid_shape": [self.cells] * len(self.groups.names)}


def dominates(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a[i]`` dominates ``b`` (at least as good everywhere, better somewhere), per row."""
    return (a >= b).all(dim=-1) & (a > b).any(dim=-1)


def crowding(objs: torch.Tensor) -> torch.Tensor:
    """NSGA-II crowding distance of each row of ``(P, M)`` objectives (boundaries infinite)."""
    p, m = objs.shape
    out = torch.zeros(p, dtype=torch.float64)
    if p <= 2:
        return out.fill_(float("inf"))
    for j in range(m):
        order = torch.argsort(objs[:, j], stable=True)
        col = objs[order, j]
        span = (col[-1] - col[0]).item()
        out[order[0]] = out[order[-1]] = float("inf")
        if span > 0:
            out[order[1:-1]] += (col[2:] - col[:-2]) / span
    return out


class ParetoArchive(Archive):
    """The non-dominated set over the objective groups. A dominated child is dropped; a kept
    child evicts the members it dominates; when the archive is full, the row with the smallest
    crowding distance (first on ties) goes, which may be the child itself. Parents: two
    members, uniformly."""

    def __init__(self, groups: ExampleGroups, size: int):
        self.groups, self.size = groups, size

    def add(self, state, cid, params, scores, buf=None):
        filled = state.filled
        child = self.groups.scores(scores)
        beaten = []
        if filled:
            objs = self.groups.scores(state.scores[filled])
            if bool(dominates(objs, child).any()):
                return state, Status.NOT_KEPT
            beaten = [filled[i] for i, d in enumerate(dominates(child, objs).tolist()) if d]
        buf = state.scores.clone() if buf is None else buf
        for slot in beaten:  # evict what the child dominates
            buf[slot] = 0.0
            state = replace(
                state,
                params=state.params[:slot] + (None,) + state.params[slot + 1 :],
                ids=state.ids[:slot] + (-1,) + state.ids[slot + 1 :],
            )
        empty = [i for i, m in enumerate(state.ids) if m < 0]
        if empty:
            status = Status.IMPROVED if beaten else Status.NEW
            return place(state, empty[0], cid, params, scores, buf), status
        rows = torch.cat([self.groups.scores(buf), child[None]])
        drop = int(torch.argmin(crowding(rows)))  # first of the least crowded
        if drop == len(state.ids):
            return replace(state, scores=buf), Status.NOT_KEPT
        return place(state, drop, cid, params, scores, buf), Status.IMPROVED

    def sample_parents(self, state, u_a, u_b):
        return uniform_pair(state, u_a, u_b)

    def rescored(self, state, scores):
        return reseated(self, state, scores)

    def can_matter(self, state, low, high):
        """Unless a member dominates its best case (then it dominates the child: dropped
        before it evicts anyone)."""
        filled = state.filled
        if not filled:
            return True
        objs = self.groups.scores(state.scores[filled])
        return not bool(dominates(objs, self.groups.scores(high)).any())

    def stats(self, state, filled):
        return {"front_size": int(filled.sum())}

    def report(self, state):
        """The members' objectives (members x objectives), for the report's front plot."""
        objs = self.groups.scores(state.scores[state.filled])
        return {"objectives": objs}, {"objective_names": list(self.groups.names)}
