"""FW-Merging: Frank-Wolfe over the convex hull of a pool of models.

Chen et al. 2025, "FW-Merging: Scaling Model Merging with Frank-Wolfe Optimization" (ICCV,
arXiv:2503.12649). Merging is ``min_x f(x)`` over the hull of the models, ``f`` a loss on a
small labelled proxy set (here: ``-sum log p(y | x)`` over the merged models' examples, the
plug-in's ``log_likelihoods``). Each step linearises ``f`` at the current merge ``x_t``,
asks a linear-minimisation oracle (LMO) for the vertex ``s_t`` of the pool that decreases it
most, and moves towards it: ``x_{t+1} = x_t + gamma_t * lambda * (s_t - x_t)`` with
``gamma_t = step_size * 2 / (t + 2)``, the classic Frank-Wolfe schedule.

Followed from the authors' released code (hmarkc/FW-Merging, ``frank_wolfe_merge``), where it
is more specific than the paper:

* the start ``x_0`` is the merging function over all models (here task arithmetic,
  ``base + lambda sum_k tau_k``), and ``x_0`` joins the pool as one more vertex;
* the LMO scores a vertex by the *cosine* between the gradient and the vertex's own
  parameters, ``<g, v> / (|g| |v|)``, not the plain inner product ``<g, v>`` nor the
  direction ``v - x_t``; task-wise it sums the per-tensor cosines and takes the smallest;
  layer-wise it picks per tensor (per group), and where no vertex has a negative cosine it
  takes the zero vector (the origin is a vertex, so the step shrinks that tensor);
* the move is the merging function applied to ``x_t`` and ``s_t`` at scale
  ``lambda * gamma_t``; the released configs use TIES trimming there, this implementation
  task arithmetic (no trimming), so each step is exactly the linear update above and the
  result stays a per-group combination of the base and the models;
* the whole proxy set gives each step's gradient (no sampling); 10 steps (``steps``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evomerge.ops.learned_coefficients import Pool

#: the layer-wise LMO's answer where no vertex decreases the loss: the origin
ZERO = -1


def _cos(g: torch.Tensor, v: torch.Tensor) -> float:
    gn, vn = float(g.norm()), float(v.norm())
    if gn == 0.0 or vn == 0.0:
        return 0.0
    return float(torch.dot(g.reshape(-1).double(), v.reshape(-1).double())) / (gn * vn)


def alignment(pool: Pool, grad: torch.Tensor, vertices: list[torch.Tensor], by: str):
    """``(units, V)`` cosines between the gradient and each vertex: per layout tensor
    (``by="tensor"``) or per group over the group's tensors joined (``by="group"``)."""
    g_parts = torch.split(grad.detach().float(), pool.sizes)
    v_parts = [torch.split(v, pool.sizes) for v in vertices]
    if by == "tensor":
        return torch.tensor(
            [[_cos(g_parts[t], vp[t]) for vp in v_parts] for t in range(len(pool.sizes))]
        )
    rows = []
    for g in range(len(pool.groups)):
        ts = [t for t, gg in enumerate(pool.group) if gg == g]
        gj = torch.cat([g_parts[t] for t in ts])
        rows.append([_cos(gj, torch.cat([vp[t] for t in ts])) for vp in v_parts])
    return torch.tensor(rows)


def lmo(cos: torch.Tensor, layer_wise: bool) -> list[int]:
    """The oracle's choice from ``(units, V)`` cosines: per group the vertex of least cosine,
    or :data:`ZERO` where none is negative (layer-wise); task-wise one vertex for all, the
    least sum of cosines over the units (first on ties)."""
    if not layer_wise:
        best = int(torch.argmin(cos.sum(dim=0)))
        return [best] * cos.shape[0]
    low, idx = cos.min(dim=1)
    return [int(i) if float(v) < 0 else ZERO for v, i in zip(low, idx, strict=True)]


def frank_wolfe(
    pool: Pool,
    grad_of: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 10,
    step_size: float = 1.0,
    scale: float = 1.0,
    layer_wise: bool = True,
) -> tuple[torch.Tensor, dict]:
    """The ``(groups, 1 + K)`` coefficient table over [base, models] after ``steps`` FW steps,
    and a report (each step's vertex choices and step size).

    ``grad_of(x)`` is the gradient of the loss at the flat merged vector ``x``. The vertices
    are the K models, then the start ``x_0`` (and the origin, layer-wise).
    """
    k = pool.k
    g_count = len(pool.groups)
    start = torch.tensor([1.0 - scale * k] + [scale] * k, dtype=torch.float64)
    rows = [torch.eye(k + 1, dtype=torch.float64)[i + 1] for i in range(k)] + [start]
    coeffs = start.repeat(g_count, 1)
    x0 = pool.merged(start.float().repeat(g_count, 1))
    vertices = [torch.cat(m) for m in pool.models] + [x0]
    by = "group" if layer_wise else "tensor"  # task-wise: the code's sum of per-tensor cosines
    chosen, gammas = [], []
    for t in range(int(steps)):
        x = pool.merged(coeffs.float())
        grad = grad_of(x)
        picks = lmo(alignment(pool, grad, vertices, by), layer_wise)
        if not layer_wise:
            picks = [picks[0]] * g_count
        gamma = step_size * 2.0 / (t + 2.0)
        move = gamma * scale
        for g, p in enumerate(picks):
            target = torch.zeros(k + 1, dtype=torch.float64) if p == ZERO else rows[p]
            coeffs[g] += move * (target - coeffs[g])
        chosen.append(picks if layer_wise else picks[:1])
        gammas.append(gamma)
    return coeffs, {"gradient_steps": int(steps), "chosen": chosen, "gamma": gammas}


def likelihood_gradient(plugin, ids: torch.Tensor, batch_size: int):
    """``grad_of`` for :func:`frank_wolfe`: the gradient of ``-sum log p(y | x)`` over the
    examples ``ids``, through the plug-in's ``log_likelihoods`` (chunks of ``batch_size``)."""

    def grad_of(x: torch.Tensor) -> torch.Tensor:
        p = x.detach().float().clone().requires_grad_(True)
        total = torch.zeros_like(p)
        for i in range(0, len(ids), batch_size):
            (g,) = torch.autograd.grad(-plugin.log_likelihoods(p, ids[i : i + batch_size]).sum(), p)
            total += g
        return total

    return grad_of


def learn(plugin, pool: Pool, ids, params: dict, seed: int, batch_size: int):
    """The merge method's learner: FW-Merging on ``-sum log p(y | x)`` over every model's
    examples (the plug-in's ``log_likelihoods``); deterministic, ``seed`` is unused."""
    if not callable(getattr(plugin, "log_likelihoods", None)):
        raise TypeError(
            f"{type(plugin).__name__} gives no log_likelihoods(params, example_ids); "
            "FW-Merging needs them (evomerge.core.contracts.ExampleStatistics)"
        )
    every = torch.cat(list(ids))
    return frank_wolfe(
        pool,
        likelihood_gradient(plugin, every, batch_size),
        steps=int(params["steps"]),
        step_size=float(params["step_size"]),
        scale=float(params["lambda"]),
        layer_wise=bool(params["layer_wise"]),
    )
