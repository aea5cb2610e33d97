"""CMA-ES (pycma) over a real gene vector, with exact, pickle-free resume.

pycma's ES object cannot be saved without pickle, so the state is the search's explicit
history: every generation's solutions (as pycma asked them, float64) and the values it was
told, plus the best candidate so far. The live ES is only a cache, rebuilt when needed by
replaying that history. pycma draws from numpy's global RNG; each ``ask`` runs with it seeded
by ``key(seed, generation)`` (and restored afterwards), so a replay asks exactly what the
original run asked, and the same seed gives the same search.

``diagonal: true`` is pycma's separable CMA-ES (``CMA_diagonal``); ``sep_cmaes`` is the same
family over an O(D) explicit state (:mod:`~evomerge.search.cma_family`: both generational,
best-so-far, same statistics and checkpoint codec). Not thread-safe: the ES cache and
numpy's global RNG are shared.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from evomerge.core.keys import key
from evomerge.search.base import BEST_CODEC, Best, StrategyEntry
from evomerge.search.cma_family import CMAFamily, CMAFamilyConfig
from evomerge.search.codec import Stacked, codec
from evomerge.search.random_search import check_bounds, to_float32

INIT_STREAM = 1 << 62  # key index of the ES's own ``seed`` option
TELL_STREAM = 1 << 61  # key indices (+ generation) numpy is seeded with around ``tell``


class CMAESConfig(CMAFamilyConfig):
    """``strategy:`` section for ``name: cmaes``."""

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


def _no_solutions(state: CMAState) -> torch.Tensor:
    return torch.zeros(0, state.x0.numel(), dtype=torch.float64)


def _no_objective(state: CMAState) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class CMAState:
    """The whole search state; generation g's rows have ids ``k + g * popsize + row``.

    Checkpoint: ``x0``; ``solutions`` and ``objective``, the generations stacked, with their
    number in meta ``generations``; ``last_scores``; ``best_*``; ``evaluations``, ``next_id``.
    """

    x0: torch.Tensor  # (D,) float64: the ES's initial mean
    # per generation (popsize, D) float64, as asked
    solutions: tuple = field(metadata=codec(Stacked("generations", _no_solutions)))
    # per generation (popsize,) float64: -mean score, told
    objective: tuple = field(metadata=codec(Stacked("generations", _no_objective)))
    last_scores: torch.Tensor  # (popsize, E) float32 of the last generation; (0, E) before
    best: Best = field(metadata=BEST_CODEC)
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


class CMAES(CMAFamily):
    """Ask/tell CMA-ES. The object holds config, seed and a cache of the live pycma ES."""

    state_type = CMAState

    def __init__(self, config: CMAESConfig, seed: int):
        super().__init__(config, seed)
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

    # -- the family's parts ------------------------------------------------------------------
    def _start(self, mean: torch.Tensor) -> dict:
        """The ES starts at the seeds' mean, clamped into bounds."""
        if self.config.bounds is not None:
            mean = mean.clamp(*self.config.bounds)
        return {"x0": mean.contiguous(), "solutions": (), "objective": ()}

    def _generation(self, state: CMAState) -> torch.Tensor:
        """The in-bounds points pycma asked, as float32."""
        return to_float32(torch.from_numpy(self._asked(state)), self.config.bounds)

    def _update(self, state: CMAState, objective: torch.Tensor) -> CMAState:
        asked = self._asked(state)
        live, self._live = self._live, None  # a failing tell leaves no half-told cache
        self._es_tell(live.es, state.generation, asked, objective)
        new = replace(
            state,
            solutions=state.solutions + (torch.from_numpy(asked.copy()),),
            objective=state.objective + (objective,),
        )
        self._live = _Live(live.es, new.x0, new.solutions, new.objective)
        return new


CMAES_STRATEGY = StrategyEntry(CMAESConfig, CMAES)
