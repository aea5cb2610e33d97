"""TALL masks and consensus merging (Wang et al. 2024, "Localizing Task Information for
Improved Model Merging and Compression"), as the authors' released code (nik-dim/tall_masks)
computes them, per tensor.

The multi-task vector ``tv`` is the task arithmetic sum ``sum_k w_k tau_k`` (or TIES's
disjoint *sum* of the top ``density`` of each task vector, for the TIES variant: the code's
``ties_merging(reset_thresh=20, merge_func="dis-sum")``). Task k's TALL mask keeps the entries
where the multi-task model is farther from the fine-tuned one than the base is, scaled:
``m_k = |tau_k| > tall_mask_lambda * |tv - tau_k|`` (``|theta_0 - theta_k|`` against
``|theta_0 + tv - theta_k|``, with the unscaled ``tv``, as the code builds them).

* ``consensus_ta`` / ``consensus_ties``: keep only the entries at least ``k`` masks use
  (``k = 2`` drops the "catastrophic" weights no task uses and the "selfish" ones only one task
  uses; 0 is plain task arithmetic / TIES), ``base + lambda * tv * [sum_k m_k >= k]``.
* ``tall_masks``: task ``task``'s model rebuilt from the merged one and its mask,
  ``base + lambda * m_task * tv`` (the paper's compression: one merged model plus a bit mask
  per task).

The code picks ``tall_mask_lambda`` per task from {0.2, ..., 0.6} on validation data; here it
is one parameter (a recipe search can evolve it). Task vectors weigh ``w_k`` (1 by default,
the code's plain sum) in ``tv`` only; the masks compare each task's own ``tau_k``.
"""

from __future__ import annotations

import torch

from evomerge.ops.op_support import as_index, as_number, work_dtype
from evomerge.ops.task_vectors import generalized_task_arithmetic, magnitude_trim

_DIS_SUM = {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}


def multi_task_vector(base, models, model_params, ties: bool):
    """``tv`` (work dtype, base's shape): the weighted sum, or TIES's disjoint sum."""
    work = work_dtype(base)
    b = base.to(work)
    if not ties:
        return sum(as_number(mp["weight"], "weight") * (m.to(work) - b) for m, mp in
                   zip(models, model_params, strict=True))  # fmt: skip
    merged = generalized_task_arithmetic(
        b,
        [m.to(work) for m in models],
        model_params,
        _DIS_SUM,
        None,
        sparsify=magnitude_trim,
        consensus=True,
    )
    return merged - b


def tall_masks_of(base, models, tv, tall_lambda: float) -> torch.Tensor:
    """The (K, *shape) boolean TALL masks ``|tau_k| > tall_lambda * |tv - tau_k|``."""
    work = tv.dtype
    b = base.to(work)
    taus = torch.stack([m.to(work) - b for m in models])
    return taus.abs() > (tv - taus).abs() * tall_lambda


def _setup(base, models, params):
    if not models:
        raise ValueError("a TALL-mask merge needs at least one model")
    tall_lambda = as_number(params["tall_mask_lambda"], "tall_mask_lambda")
    if tall_lambda < 0:
        raise ValueError(f"tall_mask_lambda must be >= 0, got {tall_lambda}")
    return tall_lambda, as_number(params["lambda"], "lambda")


def _consensus(base, models, model_params, params, generator, *, ties):
    tall_lambda, lam = _setup(base, models, params)
    k = as_number(params["k"], "k")
    tv = multi_task_vector(base, models, model_params, ties)
    used = tall_masks_of(base, models, tv, tall_lambda).sum(dim=0)
    kept = tv * (used >= k)
    return (base.to(tv.dtype) + lam * kept).to(base.dtype)


def consensus_ta(base, models, model_params, params, generator):
    """Consensus merging over task arithmetic (see the module docstring)."""
    return _consensus(base, models, model_params, params, generator, ties=False)


def consensus_ties(base, models, model_params, params, generator):
    """Consensus merging over TIES's disjoint sum (see the module docstring)."""
    return _consensus(base, models, model_params, params, generator, ties=True)


def tall_masks(base, models, model_params, params, generator):
    """Task ``task``'s model rebuilt as ``base + lambda * m_task * tv`` (module docstring)."""
    tall_lambda, lam = _setup(base, models, params)
    task = as_index(params["task"], "task")
    if not 0 <= task < len(models):
        raise ValueError(f"task must index the models (0 .. {len(models) - 1}), got {task}")
    tv = multi_task_vector(base, models, model_params, False)
    mask = tall_masks_of(base, models, tv, tall_lambda)[task]
    return (base.to(tv.dtype) + lam * (tv * mask)).to(base.dtype)
