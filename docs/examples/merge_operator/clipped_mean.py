"""A merge method of your own: the mean of the task vectors, each clipped to +/- clip."""

import torch

from evomerge.ops.operators import BaseRole, MergeMethod, Parameters, register_merge_method


def clipped_mean(base, models, model_params, params, generator):
    """base + lambda * mean_k(weight_k * clamp(theta_k - base, -clip, clip))."""
    clip = float(params["clip"])
    work = torch.float32 if base.dtype in (torch.float16, torch.bfloat16) else base.dtype
    total = torch.zeros(base.shape, dtype=work)
    for theta, p in zip(models, model_params, strict=True):
        total += float(p["weight"]) * (theta.to(work) - base.to(work)).clamp(-clip, clip)
    out = base.to(work) + float(params["lambda"]) * total / len(models)
    return out.to(base.dtype)


register_merge_method(
    MergeMethod(
        "clipped_mean",
        clipped_mean,
        BaseRole.REQUIRED,  # it merges task vectors: a base must be given
        model_params=Parameters(required=("weight",)),
        params=Parameters(required=("clip",), defaults={"lambda": 1.0}),
        mergekit=None,  # mergekit has no such method: exports write no mergekit.yaml
        reference="docs/merge-operator.md",
    )
)
