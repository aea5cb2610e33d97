"""RAM and RAM+ (mergekit's ``ram``, ``ramplus_tl``): keep what one model alone changed, average
what several changed.

"Reinforced Agent Merging" (arXiv:2601.13572) as mergekit 0.1.5 implements it, per tensor:
an entry of task vector ``tau_k = theta_k - base`` counts when ``|tau_k| > epsilon``; an entry
that only one model changes takes that model's value, one that several change takes the mean
of their values (entries under ``epsilon`` are left out of both), and one that no model changes
stays at the base.

``ramplus_tl`` (RAM+, tensor-local) also scales each model's unique entries by
``lambda_k = 1 + r * clamp(rho_k, 0, alpha)``, where ``rho_k = shared_k / max(unique_k,
epsilon)`` counts, in this tensor, the entries model k shares with others against those only it
changed: a model whose changes mostly overlap others' has its few unique ones reinforced.

Half-precision inputs are computed in float32 and rounded once (mergekit computes in the input
dtype).
"""

from __future__ import annotations

import torch

from evomerge.ops.op_support import as_number, work_dtype


def _task_vectors(base, models, epsilon):
    """Task vectors (K, n) with entries at most ``epsilon`` zeroed, their mask and counts."""
    work = work_dtype(base)
    b = base.reshape(-1).to(work)
    taus = torch.stack([m.reshape(-1).to(work) - b for m in models])
    used = taus.abs() > epsilon
    taus = taus * used
    count = used.sum(dim=0)
    return b, taus, used, count


def _merge(base, models, params, unique_scale):
    epsilon = as_number(params["epsilon"], "epsilon")
    if not models:
        return base.clone()
    b, taus, used, count = _task_vectors(base, models, epsilon)
    unique, shared = count == 1, count > 1
    scale = unique_scale(used, unique, shared)  # (K, 1) or None
    alone = taus * unique if scale is None else taus * unique * scale
    together = taus * shared / count.clamp(min=1)
    out = b + (alone + together).sum(dim=0)
    return out.view(base.shape).to(base.dtype)


def ram(base, models, model_params, params, generator):
    """mergekit's ``ram`` on one tensor (see the module docstring)."""
    return _merge(base, models, params, lambda used, unique, shared: None)


def ramplus_tl(base, models, model_params, params, generator):
    """mergekit's ``ramplus_tl`` on one tensor (see the module docstring)."""
    r = as_number(params["r"], "r")
    alpha = as_number(params["alpha"], "alpha")
    epsilon = as_number(params["epsilon"], "epsilon")

    def reinforce(used, unique, shared):
        # float32 counts and ratio, as mergekit's (its counts divide into torch's default dtype)
        shared_k = (used & shared).sum(dim=1).to(torch.float32)
        unique_k = (used & unique).sum(dim=1).to(torch.float32)
        rho = shared_k / unique_k.clamp(min=epsilon)
        lam = 1 + r * rho.clamp(min=0, max=alpha)
        return lam.to(work_dtype(base)).unsqueeze(-1)

    return _merge(base, models, params, reinforce)
