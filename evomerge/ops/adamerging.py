"""AdaMerging: task-vector coefficients learnt by minimising prediction entropy on unlabelled data.

Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning" (ICLR,
arXiv:2310.02575). The merged model is task arithmetic with learnt coefficients,

    theta = base + sum_k lambda_k[g] * tau_k,      tau_k = theta_k - base,

one ``lambda_k`` per task (task-wise) or one per task and tensor (layer-wise; the paper's
"layer" is each parameter tensor). The coefficients minimise ``sum_k mean_x H(p(. | x;
theta))`` over unlabelled examples ``x`` of each task ``k``, ``H`` the Shannon entropy of the
model's predicted distribution; the labels are never read.

Followed from the authors' released code (EnnengYang/AdaMerging, ``main_*_adamerging.py``)
where the paper leaves it open: coefficients start at 0.3 (``init``); each is clamped to
[0, 1] inside the forward pass (``clamp(raw)``, so a raw value pushed past a bound gets no
gradient there and stays); Adam with lr 1e-3, betas (0.9, 0.999), no weight decay; each step
sums, over tasks, the mean entropy of a fresh shuffled batch of that task's examples (the code
takes two batches of 16, i.e. 32: ``batch``); the base's own coefficient stays 1. The code runs
500 steps (``steps``). Examples are drawn with a generator seeded by the merge's seed, so a
merge is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from evomerge.ops.learned_coefficients import Pool


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_c p_c log p_c`` for ``(rows, classes)`` log-probabilities."""
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


def coefficient_table(lambdas: torch.Tensor) -> torch.Tensor:
    """``(groups, K)`` task coefficients -> ``(groups, 1 + K)`` over [base, models]:
    ``base + sum lambda_k (theta_k - base) = (1 - sum lambda_k) base + sum lambda_k theta_k``."""
    return torch.cat([1.0 - lambdas.sum(dim=1, keepdim=True), lambdas], dim=1)


def adamerging(
    pool: Pool,
    loss_of: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor],
    ids: Sequence[torch.Tensor],
    steps: int = 500,
    lr: float = 1e-3,
    init: float = 0.3,
    batch: int = 32,
    seed: int = 0,
) -> tuple[torch.Tensor, dict]:
    """The learnt ``(groups, 1 + K)`` coefficient table and a report (loss per step).

    ``loss_of(merged flat vector, task k, example ids)`` is task ``k``'s mean prediction
    entropy on those examples (differentiable in the vector); ``ids[k]`` are task ``k``'s
    unlabelled examples.
    """
    if len(ids) != pool.k:
        raise ValueError(f"{len(ids)} example sets for {pool.k} task vectors")
    if steps < 0 or batch < 1 or lr <= 0:
        raise ValueError("steps must be >= 0, batch >= 1 and lr > 0")
    raw = torch.full((len(pool.groups), pool.k), float(init), requires_grad=True)
    opt = torch.optim.Adam([raw], lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(seed))
    losses = []
    for _ in range(int(steps)):
        x = pool.merged(coefficient_table(raw.clamp(0.0, 1.0)))
        total = 0.0
        for k, task_ids in enumerate(ids):
            pick = torch.randperm(len(task_ids), generator=gen)[:batch]
            total = total + loss_of(x, k, task_ids[pick])
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    table = coefficient_table(raw.detach().clamp(0.0, 1.0))
    return table, {"gradient_steps": int(steps), "loss": losses}


def entropy_loss(plugin) -> Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]:
    """``loss_of`` through a plug-in's ``log_probabilities`` hook (OutputDistributions)."""
    return lambda x, k, chosen: entropy(plugin.log_probabilities(x, chosen))


def learn(plugin, pool: Pool, ids, params: dict, seed: int, batch_size: int):
    """The merge method's learner: AdaMerging through the plug-in's ``log_probabilities``
    (``batch_size`` is unused: each step takes ``params["batch"]`` examples per task)."""
    if not callable(getattr(plugin, "log_probabilities", None)):
        raise TypeError(
            f"{type(plugin).__name__} gives no log_probabilities(params, example_ids); "
            "AdaMerging needs the model's output distribution (evomerge.core.contracts."
            "OutputDistributions)"
        )
    return adamerging(
        pool,
        entropy_loss(plugin),
        ids,
        steps=int(params["steps"]),
        lr=float(params["lr"]),
        init=float(params["init"]),
        batch=int(params["batch"]),
        seed=seed,
    )
