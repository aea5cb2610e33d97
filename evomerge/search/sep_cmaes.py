"""sep-CMA-ES: CMA-ES with a diagonal covariance, for dense problems of many dimensions.

Full-covariance CMA-ES on the 19,210 parameters of the digits MLP needs a 19,210² matrix
(~3 GB per copy, ~9 GB in pycma) and seconds of eigendecomposition per generation; pycma's
diagonal mode avoids the matrix but its state can only be saved by pickling it or by replaying
every generation's solutions (gigabytes for 50,000 evaluations). This is the separable variant
of Ros and Hansen (2008) over an explicit state (evosax-style): the mean, step size, diagonal
covariance and the two evolution paths, O(D) floats that *are* the checkpoint. Generation g
draws its ``N(0, I)`` samples from key ``(seed, g)``, so a resumed run asks what the
uninterrupted one asked.

Update (weights ``w_i = ln(mu + 1/2) - ln i`` normalised, ``mu = lambda / 2``), with CMA's
default rates and sep-CMA's ``(D + 2) / 3`` speed-up of ``c_1`` and ``c_mu``::

    m   <- m + sigma * y_w                         y_w = sum w_i y_(i:lambda), y = sqrt(d) * z
    p_s <- (1 - c_s) p_s + sqrt(c_s (2 - c_s) mu_eff) z_w
    p_c <- (1 - c_c) p_c + h_s sqrt(c_c (2 - c_c) mu_eff) y_w
    d   <- (1 - c_1 - c_mu) d + c_1 (p_c^2 + (1 - h_s) c_c (2 - c_c) d) + c_mu sum w_i y_i^2
    sigma <- sigma * exp(c_s / d_s * (|p_s| / E|N(0, I)| - 1))

Fitness minimised: minus the mean per-example score; ties keep the earlier sample first.
Generational: ``ask`` returns one whole generation whatever ``n`` is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from evomerge.core.keys import child_generator
from evomerge.search.m2n2 import Children
from evomerge.search.random_search import Best, best_of, score_stats


class SepCMAESConfig(BaseModel):
    """``strategy:`` section for ``name: sep_cmaes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["sep_cmaes"] = "sep_cmaes"
    sigma0: float = Field(0.05, gt=0, description="Initial step size (parameter units).")
    popsize: int | None = Field(
        None, ge=4, description="Candidates per generation (null: 4 + floor(3 ln D))."
    )

    @property
    def alpha(self) -> float:
        return 0.0


@dataclass(frozen=True)
class SepState:
    mean: torch.Tensor  # (D,) float64
    sigma: float
    diag: torch.Tensor  # (D,) float64: the diagonal covariance
    path_c: torch.Tensor  # (D,)
    path_s: torch.Tensor  # (D,)
    generation: int
    last_scores: torch.Tensor  # (popsize, E) float32 of the last generation; (0, E) before
    best: Best
    evaluations: int
    next_id: int


@dataclass(frozen=True)
class _Rates:
    lam: int
    weights: torch.Tensor
    mu_eff: float
    c_s: float
    d_s: float
    c_c: float
    c_1: float
    c_mu: float
    chi_n: float

    @classmethod
    def of(cls, dim: int, popsize: int | None) -> _Rates:
        n = float(dim)
        lam = popsize or 4 + int(3 * math.log(dim))
        mu = lam // 2
        w = torch.tensor(
            [math.log(mu + 0.5) - math.log(i + 1) for i in range(mu)], dtype=torch.float64
        )
        w /= w.sum()
        mu_eff = float(1.0 / (w * w).sum())
        c_s = (mu_eff + 2.0) / (n + mu_eff + 5.0)
        d_s = 1.0 + 2.0 * max(0.0, math.sqrt((mu_eff - 1.0) / (n + 1.0)) - 1.0) + c_s
        c_c = (4.0 + mu_eff / n) / (n + 4.0 + 2.0 * mu_eff / n)
        c_1 = 2.0 / ((n + 1.3) ** 2 + mu_eff)
        c_mu = min(1.0 - c_1, 2.0 * (mu_eff - 2.0 + 1.0 / mu_eff) / ((n + 2.0) ** 2 + mu_eff))
        speed = (n + 2.0) / 3.0  # sep-CMA-ES: a diagonal learns D times fewer numbers
        c_1, c_mu = c_1 * speed, c_mu * speed
        if c_1 + c_mu > 1.0:
            c_1, c_mu = c_1 / (c_1 + c_mu), c_mu / (c_1 + c_mu)
        chi_n = math.sqrt(n) * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n))
        return cls(lam, w, mu_eff, c_s, d_s, c_c, c_1, c_mu, chi_n)


class SepCMAES:
    """Ask/tell sep-CMA-ES; the object holds config and seed, the state is explicit."""

    def __init__(self, config: SepCMAESConfig, seed: int):
        self.config = config
        self.seed = seed
        self._gen = torch.Generator()
        self._rates: dict[int, _Rates] = {}

    def rates(self, dim: int) -> _Rates:
        """The learning rates for ``dim`` dimensions (computed once)."""
        if dim not in self._rates:
            self._rates[dim] = _Rates.of(dim, self.config.popsize)
        return self._rates[dim]

    def _samples(self, state: SepState) -> torch.Tensor:
        """Generation ``state.generation``'s ``(lambda, D)`` standard normal samples."""
        r = self.rates(state.mean.numel())
        gen = child_generator(self.seed, state.generation, self._gen)
        return torch.randn(r.lam, state.mean.numel(), generator=gen, dtype=torch.float64)

    # -- ask / tell --------------------------------------------------------------------------
    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor) -> SepState:
        """The search starts at the mean of the seed rows; seeds are ids 0..k-1."""
        k, e = seed_scores.shape
        mean = seed_params.double().mean(dim=0).contiguous()
        zeros = torch.zeros_like(mean)
        return SepState(
            mean=mean,
            sigma=self.config.sigma0,
            diag=torch.ones_like(mean),
            path_c=zeros,
            path_s=zeros.clone(),
            generation=0,
            last_scores=torch.zeros(0, e, dtype=torch.float32),
            best=best_of(range(k), seed_params, seed_scores, None),
            evaluations=0,
            next_id=k,
        )

    def ask(self, state: SepState, n: int) -> Children:
        """One whole generation as float32 rows (``n`` is ignored)."""
        z = self._samples(state)
        x = state.mean + state.sigma * z * state.diag.sqrt()
        ids = tuple(range(state.next_id, state.next_id + len(z)))
        return Children(x.to(torch.float32), ids, ((-1, -1),) * len(z))

    def tell(self, state: SepState, children: Children, scores: torch.Tensor) -> SepState:
        r = self.rates(state.mean.numel())
        expected = self.ask(state, r.lam)
        if children.ids != expected.ids or not torch.equal(children.params, expected.params):
            raise ValueError("sep_cmaes: tell() needs the whole generation ask() gave")
        z = self._samples(state)
        objective = -scores.double().mean(dim=1)
        order = torch.argsort(objective, stable=True)[: len(r.weights)]
        z_sel = z[order]
        sqrt_d = state.diag.sqrt()
        z_w = r.weights @ z_sel
        y_w = z_w * sqrt_d
        mean = state.mean + state.sigma * y_w
        path_s = (1 - r.c_s) * state.path_s + math.sqrt(r.c_s * (2 - r.c_s) * r.mu_eff) * z_w
        g = state.generation + 1
        norm_s = float(path_s.norm())
        h_s = (
            norm_s / math.sqrt(1 - (1 - r.c_s) ** (2 * g))
            < (1.4 + 2.0 / (state.mean.numel() + 1)) * r.chi_n
        )
        path_c = (1 - r.c_c) * state.path_c + float(h_s) * math.sqrt(
            r.c_c * (2 - r.c_c) * r.mu_eff
        ) * y_w
        y_sel = z_sel * sqrt_d
        rank_mu = r.weights @ (y_sel * y_sel)
        diag = (
            (1 - r.c_1 - r.c_mu) * state.diag
            + r.c_1 * (path_c * path_c + (1 - float(h_s)) * r.c_c * (2 - r.c_c) * state.diag)
            + r.c_mu * rank_mu
        )
        sigma = state.sigma * math.exp(r.c_s / r.d_s * (norm_s / r.chi_n - 1))
        return replace(
            state,
            mean=mean,
            sigma=sigma,
            diag=diag,
            path_c=path_c,
            path_s=path_s,
            generation=g,
            last_scores=scores.float().clone(),
            best=best_of(children.ids, children.params, scores, state.best),
            evaluations=state.evaluations + len(z),
            next_id=state.next_id + len(z),
        )

    # -- views -------------------------------------------------------------------------------
    def best(self, state: SepState) -> tuple[int, torch.Tensor, torch.Tensor]:
        return state.best.id, state.best.genes, state.best.scores

    def stats(self, state: SepState) -> dict:
        out = score_stats(torch.cat([state.last_scores, state.best.scores[None]]))
        out["sep_cmaes"] = {"sigma": state.sigma, "diag_mean": state.diag.mean().item()}
        return out

    # -- checkpoints -------------------------------------------------------------------------
    def state_to_tensors(self, state: SepState) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {
            "mean": state.mean,
            "diag": state.diag,
            "path_c": state.path_c,
            "path_s": state.path_s,
            "last_scores": state.last_scores,
            "best_genes": state.best.genes,
            "best_scores": state.best.scores,
        }
        meta = {
            "sigma": state.sigma,
            "generation": state.generation,
            "evaluations": state.evaluations,
            "next_id": state.next_id,
            "best_id": state.best.id,
        }
        return tensors, meta

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> SepState:
        best = Best(
            int(meta["best_id"]), tensors["best_genes"].clone(), tensors["best_scores"].clone()
        )
        return SepState(
            mean=tensors["mean"].clone(),
            sigma=float(meta["sigma"]),
            diag=tensors["diag"].clone(),
            path_c=tensors["path_c"].clone(),
            path_s=tensors["path_s"].clone(),
            generation=int(meta["generation"]),
            last_scores=tensors["last_scores"].clone(),
            best=best,
            evaluations=int(meta["evaluations"]),
            next_id=int(meta["next_id"]),
        )
