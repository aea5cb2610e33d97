"""CMA-adaptive mutation: a Gaussian whose shape and step size learn from successful children.

The variation operator of the "crossover of parameter regions plus CMA-style mutation" hybrid
(``strategy.adaptive_mutation`` for ``m2n2``, ``ga``, ``map_elites`` and ``pareto``). A child
made by crossover gets ``sigma * y`` added, ``y ~ N(0, C)``:

* dense genomes (from-scratch models, recipe genes): one ``y`` over the whole vector;
* lineage genomes: one ``y`` per region over its ``K`` seed coefficients (``C`` is ``K x K``),
  so a mutated child is still an exact mix of the seeds.

A child is *successful* when the archive keeps it. Shape *and scale* follow CMA-ES's rank-mu
update (Hansen 2016): after every ``update_every`` successes,
``C <- (1 - c_mu) C + c_mu * mean(y y^T)`` over their steps, with CMA's default ``c_mu`` for that
many equally weighted steps (times ``(D + 2) / 3`` for the diagonal variant, as in sep-CMA-ES);
``C`` is not normalised, so if the steps the archive keeps are shorter than those drawn, the
mutation shrinks, and if longer, it grows. Large vectors use a diagonal ``C``.

``success_rule: true`` also adapts ``sigma`` by the 1/5-success rule of the (1+1)-CMA-ES (Igel,
Suttorp and Hansen 2007; damping ``1 + D/2``, target 2/11). It is off by default: in an
archive search most children are dropped whatever their mutation (a kept child is a few per
cent of them once the archive is good), so the rule drives ``sigma`` towards zero.

All of it is plain float64 tensors and numbers in the strategy's state, so checkpoints and
resumes carry it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel, ConfigDict, Field

#: Vectors longer than this get a diagonal covariance when ``diagonal`` is ``auto``.
FULL_COVARIANCE_LIMIT = 1000
#: Smoothing of the success rate (the (1+1)-CMA-ES's ``c_p`` for a target of 2/11).
SUCCESS_SMOOTHING = 1.0 / 12.0


class AdaptiveMutationConfig(BaseModel):
    """``strategy.adaptive_mutation``: CMA-adaptive mutation after crossover."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sigma0: float = Field(0.01, gt=0, description="Initial step size (genome units).")
    update_every: int = Field(
        10, ge=1, description="Successful children per rank-mu covariance update (mu)."
    )
    success_rule: bool = Field(
        False, description="Also adapt sigma by the 1/5-success rule (see the module notes)."
    )
    target_success: float = Field(
        2.0 / 11.0, gt=0, lt=1, description="Success rate the step size steers to (1/5 rule)."
    )
    damping: float | None = Field(
        None, gt=0, description="Step-size damping d (null: the (1+1)-CMA-ES's 1 + D/2)."
    )
    diagonal: bool | None = Field(
        None, description=f"Diagonal covariance; null: when more than {FULL_COVARIANCE_LIMIT} dims."
    )
    keep_sum: bool = Field(
        False,
        description="Steps keep each row's sum (lineage space: a region's seed coefficients), "
        "so a mutant is never a rescaled model.",
    )


@dataclass(frozen=True)
class MutationState:
    """``sigma``, covariance (``(D, D)`` or diagonal ``(D,)``), and the pending rank-mu sum."""

    sigma: float
    cov: torch.Tensor
    pending: torch.Tensor
    count: int
    success: float

    @property
    def diagonal(self) -> bool:
        return self.cov.ndim == 1

    @property
    def dim(self) -> int:
        return int(self.cov.shape[0])

    def to_tensors(self, prefix: str = "mutation.") -> tuple[dict, dict]:
        tensors = {f"{prefix}cov": self.cov, f"{prefix}pending": self.pending}
        meta = {"sigma": self.sigma, "count": self.count, "success": self.success}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict, meta: dict, prefix: str = "mutation.") -> MutationState:
        return cls(
            sigma=float(meta["sigma"]),
            cov=tensors[f"{prefix}cov"].double().clone(),
            pending=tensors[f"{prefix}pending"].double().clone(),
            count=int(meta["count"]),
            success=float(meta["success"]),
        )


def initial(cfg: AdaptiveMutationConfig, dim: int) -> MutationState:
    diagonal = cfg.diagonal if cfg.diagonal is not None else dim > FULL_COVARIANCE_LIMIT
    cov = torch.ones(dim, dtype=torch.float64) if diagonal else torch.eye(dim, dtype=torch.float64)
    return MutationState(cfg.sigma0, cov, torch.zeros_like(cov), 0, 0.0)


def c_mu(dim: int, mu: int, diagonal: bool) -> float:
    """CMA-ES's default rank-mu learning rate for ``mu`` equally weighted steps."""
    rate = 2.0 * (mu - 2.0 + 1.0 / mu) / ((dim + 2.0) ** 2 + mu)
    if diagonal:
        rate *= (dim + 2.0) / 3.0
    return min(1.0, max(rate, 0.0))


def sample(
    state: MutationState, rows: int, gen: torch.Generator, keep_sum: bool = False
) -> torch.Tensor:
    """``(rows, D)`` float64 steps ``y ~ N(0, C)`` (before scaling by ``sigma``).

    ``keep_sum`` projects each row onto the plane where its entries sum to zero: in lineage
    space an isotropic step also moves the sum of a region's seed coefficients, which scales
    every weight of the region (norms and embeddings too) and breaks a pre-trained model long
    before the step finds a better direction (``add + reverse - base`` sums to 1, as a seed does).
    """
    z = torch.randn(rows, state.dim, generator=gen, dtype=torch.float64)
    y = z * state.cov.sqrt() if state.diagonal else z @ torch.linalg.cholesky(state.cov).T
    if keep_sum:
        y = y - y.mean(dim=1, keepdim=True)
    return y


def update(
    cfg: AdaptiveMutationConfig, state: MutationState, steps: torch.Tensor | None, kept: bool
) -> MutationState:
    """The state after one child: ``steps`` (its ``(R, D)`` y rows) and whether it was kept."""
    p = (1.0 - SUCCESS_SMOOTHING) * state.success + SUCCESS_SMOOTHING * float(kept)
    sigma = state.sigma
    if cfg.success_rule:
        target = cfg.target_success
        damping = cfg.damping if cfg.damping is not None else 1.0 + state.dim / 2.0
        sigma *= math.exp((p - target) / (damping * (1.0 - target)))
    if not kept or steps is None:
        return replace(state, sigma=sigma, success=p)
    steps = steps.double()
    if state.diagonal:
        outer = (steps * steps).mean(dim=0)
    else:
        outer = steps.T @ steps / len(steps)
    pending, count, cov = state.pending + outer, state.count + 1, state.cov
    if count >= cfg.update_every:
        rate = c_mu(state.dim, count, state.diagonal)
        cov = (1.0 - rate) * cov + rate * pending / count
        if not state.diagonal:
            cov = (cov + cov.T) / 2.0  # keep it exactly symmetric for the Cholesky factor
        pending, count = torch.zeros_like(pending), 0
    return MutationState(sigma, cov, pending, count, p)
