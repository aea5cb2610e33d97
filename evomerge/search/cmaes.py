"""CMA-ES (pycma) over a real gene vector, with exact, pickle-free resume.

pycma's ES object cannot be saved without pickle, so the state is the search's explicit
history: every generation's solutions (as pycma asked them, float64) and the values it was
told, plus the best candidate so far. The live ES is only a cache, rebuilt when needed by
replaying that history. pycma draws from numpy's global RNG; each ``ask`` runs with it seeded
by ``key(seed, generation)`` (and restored afterwards), so a replay asks exactly what the
original run asked, and the same seed gives the same search.

Generational: ``ask`` returns one whole generation of ``popsize`` candidates whatever ``n``
the loop asks for, so a run may end up to ``popsize - 1`` evaluations past its budget.
Not thread-safe: the ES cache and numpy's global RNG are shared.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evomerge.core.keys import key
from evomerge.search.m2n2 import Children
from evomerge.search.random_search import Best, best_of, check_bounds, score_stats, to_float32

INIT_STREAM = 1 << 62  # key index of the ES's own ``seed`` option
TELL_STREAM = 1 << 61  # key indices (+ generation) numpy is seeded with around ``tell``


class CMAESConfig(BaseModel):
    """``strategy:`` section for ``name: cmaes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["cmaes"] = "cmaes"
    sigma0: float = Field(
        0.3,
        gt=0,
        description="Initial step size in gene units (genes live in [0, 1], or in `bounds`).",
    )
    popsize: int | None = Field(
        None, ge=2, description="Candidates per generation (null: pycma's 4 + floor(3 ln D))."
    )
    bounds: tuple[float, float] | None = Field(
        (0.0, 1.0), description="[low, high] of every gene (pycma BoundTransform); null: none."
    )
    diagonal: bool = Field(
        False, description="Separable CMA-ES (diagonal covariance, O(D) per sample): large D."
    )

    @field_validator("bounds")
    @classmethod
    def validate_bounds(cls, value):
        return check_bounds(value)

    @property
    def alpha(self) -> float:
        """No resource competition: scores may be any real number."""
        return 0.0


@dataclass(frozen=True)
class CMAState:
    """The whole search state; generation g's rows have ids ``k + g * popsize + row``."""

    x0: torch.Tensor  # (D,) float64: the ES's initial mean
    solutions: tuple[torch.Tensor, ...]  # per generation (popsize, D) float64, as asked
    objective: tuple[torch.Tensor, ...]  # per generation (popsize,) float64: -mean score, told
    last_scores: torch.Tensor  # (popsize, E) float32 of the last generation; (0, E) before
    best: Best
    evaluations: int
    next_id: int

    @property
    def generation(self) -> int:
        return len(self.solutions)


@dataclass
class _Live:
    """A live ES that has consumed exactly the history of the states it is keyed to."""

    es: object
    x0: torch.Tensor
    solutions: tuple
    objective: tuple
    asked: np.ndarray | None = None  # this generation's solutions once asked

    def matches(self, state: CMAState) -> bool:
        # Identity, not equality: states are immutable and tell always makes new tuples.
        return (
            self.x0 is state.x0
            and self.solutions is state.solutions
            and self.objective is state.objective
        )


def _cma():
    """pycma, imported on first use (slow import; it warns that matplotlib is missing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cma
    return cma


@contextmanager
def _numpy_seeded(k: int):
    """numpy's global RNG seeded with key ``k`` for pycma, and put back as it was afterwards."""
    saved = np.random.get_state()
    np.random.seed([k & 0xFFFFFFFF, k >> 32])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"cma(\.|$)")
            yield
    finally:
        np.random.set_state(saved)


def _chunks(stacked: torch.Tensor, count: int, size: int) -> tuple[torch.Tensor, ...]:
    """``count`` generations of ``size`` rows, each owning its memory."""
    return tuple(stacked[i * size : (i + 1) * size].clone() for i in range(count))


class CMAES:
    """Ask/tell CMA-ES. The object holds config, seed and a cache of the live pycma ES."""

    def __init__(self, config: CMAESConfig, seed: int):
        self.config = config
        self.seed = seed
        self._live: _Live | None = None

    # -- pycma -------------------------------------------------------------------------------
    def _options(self) -> dict:
        cfg, cma = self.config, _cma()
        opts = {
            "seed": key(self.seed, INIT_STREAM) % (2**32 - 1) + 1,  # 0 would mean "time"
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,  # no outcmaes/ files
            "CMA_diagonal": cfg.diagonal,
        }
        if cfg.popsize is not None:
            opts["popsize"] = cfg.popsize
        if cfg.bounds is not None:
            opts["bounds"] = list(cfg.bounds)
            opts["BoundaryHandler"] = cma.BoundTransform
        return opts

    def _new_es(self, x0: torch.Tensor):
        cma = _cma()
        with _numpy_seeded(key(self.seed, INIT_STREAM)):  # pycma seeds numpy itself here
            return cma.CMAEvolutionStrategy(x0.numpy().copy(), self.config.sigma0, self._options())

    def _es_ask(self, es, generation: int) -> np.ndarray:
        with _numpy_seeded(key(self.seed, generation)):
            return np.stack(es.ask())

    def _es_tell(self, es, generation: int, solutions: np.ndarray, objective: torch.Tensor):
        # Rows with the bytes ask returned: pycma finds their genotypes (pre-BoundTransform)
        # by hashing those bytes, which a float32 round trip would break.
        with _numpy_seeded(key(self.seed, TELL_STREAM + generation)):
            es.tell([row.copy() for row in solutions], objective.tolist())

    def _ready(self, state: CMAState) -> _Live:
        """The live ES for ``state``: the cached one, or a replay of the state's history."""
        if self._live is not None and self._live.matches(state):
            return self._live
        self._live = None
        es = self._new_es(state.x0)
        for g, (recorded, objective) in enumerate(
            zip(state.solutions, state.objective, strict=True)
        ):
            asked = self._es_ask(es, g)
            if not np.array_equal(asked, recorded.numpy()):
                raise RuntimeError(
                    f"cmaes: replaying generation {g} asked other solutions than the checkpoint "
                    "records; it was made with another pycma version or strategy config (or "
                    "on a machine whose numpy/BLAS rounds differently)"
                )
            self._es_tell(es, g, asked, objective)
        self._live = _Live(es, state.x0, state.solutions, state.objective)
        return self._live

    def _asked(self, state: CMAState) -> np.ndarray:
        live = self._ready(state)
        if live.asked is None:
            live.asked = self._es_ask(live.es, state.generation)
        return live.asked

    # -- ask / tell --------------------------------------------------------------------------
    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor) -> CMAState:
        """The ES starts at the mean of the seed rows (clamped into bounds); the best seed is
        the best so far. Seeds take ids 0..k-1 and are not counted as evaluations."""
        k, e = seed_scores.shape
        x0 = seed_params.double().mean(dim=0)
        if self.config.bounds is not None:
            x0 = x0.clamp(*self.config.bounds)
        return CMAState(
            x0=x0.contiguous(),
            solutions=(),
            objective=(),
            last_scores=torch.zeros(0, e, dtype=torch.float32),
            best=best_of(range(k), seed_params, seed_scores, None),
            evaluations=0,
            next_id=k,
        )

    def ask(self, state: CMAState, n: int) -> Children:
        """One whole generation (``popsize`` candidates; ``n`` is ignored): the in-bounds
        points pycma asked, as float32. A pure function of the seed and the state."""
        asked = self._asked(state)
        params = to_float32(torch.from_numpy(asked), self.config.bounds)
        ids = tuple(range(state.next_id, state.next_id + len(asked)))
        return Children(params, ids, ((-1, -1),) * len(asked))

    def tell(self, state: CMAState, children: Children, scores: torch.Tensor) -> CMAState:
        """Tell pycma minus the mean scores; returns a new state (the old one is unchanged)."""
        asked = self._asked(state)
        expected = self.ask(state, len(asked))
        if children.ids != expected.ids or not torch.equal(children.params, expected.params):
            raise ValueError("cmaes: tell() needs the whole generation ask() gave for this state")
        objective = -scores.double().mean(dim=1)
        live, self._live = self._live, None  # a failing tell leaves no half-told cache
        self._es_tell(live.es, state.generation, asked, objective)
        new = replace(
            state,
            solutions=state.solutions + (torch.from_numpy(asked.copy()),),
            objective=state.objective + (objective,),
            last_scores=scores.float().clone(),
            best=best_of(children.ids, children.params, scores, state.best),
            evaluations=state.evaluations + len(asked),
            next_id=state.next_id + len(asked),
        )
        self._live = _Live(live.es, new.x0, new.solutions, new.objective)
        return new

    # -- views -------------------------------------------------------------------------------
    def best(self, state: CMAState) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The best candidate evaluated so far (seeds included): (id, genes, scores)."""
        return state.best.id, state.best.genes, state.best.scores

    def stats(self, state: CMAState) -> dict:
        """Statistics over the last generation and the best so far."""
        return score_stats(torch.cat([state.last_scores, state.best.scores[None]]))

    # -- checkpoints -------------------------------------------------------------------------
    def state_to_tensors(self, state: CMAState) -> tuple[dict[str, torch.Tensor], dict]:
        """The history as two stacked tensors (generation after generation) + the rest."""
        d = state.x0.numel()
        empty = torch.zeros(0, d, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        tensors = {
            "x0": state.x0,
            "solutions": torch.cat(state.solutions) if state.solutions else empty[0],
            "objective": torch.cat(state.objective) if state.objective else empty[1],
            "last_scores": state.last_scores,
            "best_genes": state.best.genes,
            "best_scores": state.best.scores,
        }
        meta = {
            "evaluations": state.evaluations,
            "next_id": state.next_id,
            "generations": state.generation,
            "best_id": state.best.id,
        }
        return tensors, meta

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> CMAState:
        """The inverse of state_to_tensors; the live ES is rebuilt by replay on first use."""
        g = int(meta["generations"])
        lam = tensors["solutions"].shape[0] // g if g else 0
        best = Best(
            int(meta["best_id"]), tensors["best_genes"].clone(), tensors["best_scores"].clone()
        )
        return CMAState(
            x0=tensors["x0"].clone(),
            solutions=_chunks(tensors["solutions"], g, lam),
            objective=_chunks(tensors["objective"], g, lam),
            last_scores=tensors["last_scores"].clone(),
            best=best,
            evaluations=int(meta["evaluations"]),
            next_id=int(meta["next_id"]),
        )
