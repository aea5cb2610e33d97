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
Generational, best-so-far, statistics and checkpoint codec: the CMA-ES family's
(:mod:`~evomerge.search.cma_family`), shared with ``cmaes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from pydantic import Field

from evomerge.core.keys import child_generator
from evomerge.search import racing
from evomerge.search.base import BEST_CODEC, Best, StrategyEntry
from evomerge.search.cma_family import CMAFamily, CMAFamilyConfig


class SepCMAESConfig(CMAFamilyConfig):
    """``strategy:`` section for ``name: sep_cmaes``."""

    name: Literal["sep_cmaes"] = "sep_cmaes"
    sigma0: float = Field(0.05, gt=0, description="Initial step size (parameter units).")
    popsize: int | None = Field(
        None, ge=4, description="Candidates per generation (null: 4 + floor(3 ln D))."
    )


@dataclass(frozen=True)
class SepState:
    """Checkpoint: the tensors and meta keys are the field names (``best_*`` for ``best``)."""

    mean: torch.Tensor  # (D,) float64
    sigma: float
    diag: torch.Tensor  # (D,) float64: the diagonal covariance
    path_c: torch.Tensor  # (D,)
    path_s: torch.Tensor  # (D,)
    generation: int
    last_scores: torch.Tensor  # (popsize, E) float32 of the last generation; (0, E) before
    best: Best = field(metadata=BEST_CODEC)
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


class SepCMAES(CMAFamily):
    """Ask/tell sep-CMA-ES; the object holds config and seed, the state is explicit."""

    state_type = SepState

    def __init__(self, config: SepCMAESConfig, seed: int):
        super().__init__(config, seed)
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

    # -- the family's parts ------------------------------------------------------------------
    def _start(self, mean: torch.Tensor) -> dict:
        mean = mean.contiguous()
        zeros = torch.zeros_like(mean)
        return {
            "mean": mean,
            "sigma": self.config.sigma0,
            "diag": torch.ones_like(mean),
            "path_c": zeros,
            "path_s": zeros.clone(),
            "generation": 0,
        }

    def _generation(self, state: SepState) -> torch.Tensor:
        z = self._samples(state)
        return (state.mean + state.sigma * z * state.diag.sqrt()).to(torch.float32)

    def _update(self, state: SepState, objective: torch.Tensor) -> SepState:
        r = self.rates(state.mean.numel())
        z = self._samples(state)
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
            state, mean=mean, sigma=sigma, diag=diag, path_c=path_c, path_s=path_s, generation=g
        )

    def rank_settled(self, i: int, lo: torch.Tensor, hi: torch.Tensor) -> bool:
        """Only the best ``mu`` are ranked (a stable sort): settled when its interval overlaps
        no other's, or ``mu`` others are surely better."""
        mu = len(lo) // 2  # len(_Rates.weights): lambda // 2
        return racing.rank_isolated(i, lo, hi) or racing.surely_better(i, lo, hi) >= mu

    def variant_stats(self, state: SepState) -> dict:
        return {"sep_cmaes": {"sigma": state.sigma, "diag_mean": state.diag.mean().item()}}


SEP_CMAES_STRATEGY = StrategyEntry(SepCMAESConfig, SepCMAES)
