"""Per-tensor merge operators with mergekit's conventions, in a registry users can extend.

A merge method is a :class:`~evomerge.ops.method.MergeMethod`: a function over one tensor of
every input model plus its declaration (required and defaulted parameters, the base model's
role, its mergekit name; see :mod:`evomerge.ops.method`). ``MERGE_METHODS`` holds the built-in
ones (declared in :mod:`evomerge.ops.method_table`) under
mergekit's names (``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``,
``breadcrumbs``, ``breadcrumbs_ties``, ``slerp``, ``della``, ``della_linear``,
``model_stock``, ``nuslerp``, ``multislerp``, ``karcher``, ``sce``, ``nearswap``,
``passthrough``) plus M2N2's ``region_crossover`` and the data-aware ``fisher`` and ``regmean``
(:mod:`~evomerge.ops.data_aware`, whose statistics come from a pass over a fitness plug-in's
examples, :mod:`~evomerge.ops.statistics`); add your own without editing the package::

    from evomerge.ops.operators import BaseRole, MergeMethod, register_merge_method

    def mean(base, models, model_params, params, generator):
        return sum(models) / len(models)

    register_merge_method(MergeMethod("mean", mean, BaseRole.NONE))

or name the module defining it in a config's ``extensions:`` list (see
:mod:`evomerge.core.extensions`), so it is registered on every Ray worker too.

Conventions shared by every built-in method (so a mergekit recipe gives mergekit's tensors):

* Inputs are never modified. float16/bfloat16 inputs are computed in float32 and the result is
  rounded once to the inputs' dtype (mergekit computes in the input dtype, so half-precision
  results can differ in the last bit); float32/float64 inputs are computed in their own dtype.
* A required parameter (declared without a default) must be given. Unknown parameter names
  are errors (mergekit ignores them), so a typo never silently does nothing.
* Task-vector methods (mergekit's "generalized task arithmetic") compute
  ``tau_k = theta_k - base``, sparsify each ``tau_k`` with its own ``density``, multiply by its
  ``weight`` (weights are applied *after* trimming, and the TIES sign election sees weighted
  values), optionally keep only the entries that agree with the elected sign, sum, divide by the
  summed weights when ``normalize``, multiply by ``lambda`` and add to ``base``.

Methods, their parameters (per model / global) and defaults, as in mergekit:

=================  ==========================================  ==================================
method             per model                                   global
=================  ==========================================  ==================================
linear             weight                                      normalize=True
task_arithmetic    weight, density=1 (unused)                  normalize=False, rescale=False
ties               weight, density=1                           normalize=True, rescale=False
dare_linear        weight, density=1                           normalize=False, rescale=True
dare_ties          weight, density=1                           normalize=False, rescale=True
breadcrumbs        weight, density=1, gamma=0.01               normalize=False, rescale=False
breadcrumbs_ties   weight, density=1, gamma=0.01               normalize=False, rescale=False
slerp              -                                           t
della              weight, density=1, epsilon=0.15             normalize=True, rescale=True
della_linear       weight, density=1, epsilon=0.15             normalize=False, rescale=True
model_stock        -                                           filter_wise=False
nuslerp            weight                                      nuslerp_flatten=True,
                                                               nuslerp_row_wise=False
multislerp         weight                                      normalize_weights=True, eps=1e-8
karcher            -                                           max_iter=10, tol=1e-5
sce                -                                           select_topk=1, int8_mask=False
nearswap           -                                           t
passthrough        scale=1                                     -
region_crossover   -                                           offset=0, split, w, omega
fisher             weight=1                                    fisher_floor=1e-6
regmean            weight=1                                    alpha=0.9
arcee_fusion       -                                           -
ram                -                                           epsilon=1e-5
ramplus_tl         -                                           r=0.1, alpha=0.2, epsilon=1e-5
pcb                weight=1                                    pcb_ratio=0.1, lambda=1
consensus_ta       weight=1                                    k=2, tall_mask_lambda=0.4, lambda=1
consensus_ties     weight=1, density=0.2                       k=2, tall_mask_lambda=0.4, lambda=1
tall_masks         weight=1                                    task, tall_mask_lambda=0.4,
                                                               lambda=1
=================  ==========================================  ==================================

arcee_fusion (:mod:`~evomerge.ops.arcee_fusion`), ram and ramplus_tl (:mod:`~evomerge.ops.ram`)
are mergekit 0.1.5's; pcb (:mod:`~evomerge.ops.pcb`) and the TALL-mask methods
(:mod:`~evomerge.ops.consensus`) follow their authors' released code.

fisher and regmean take ``statistics`` (per model, this tensor's diagonal Fisher or its layer's
input Gram matrix) besides the tensors; ``MergeMethod.statistics`` names the kind they need
(``"fisher"`` or ``"gram"``), which the merge engine and recipe searches compute or read.

della/della_linear (:mod:`~evomerge.ops.della`) are task-vector methods with DELLA's
rank-dependent drops; model_stock, nuslerp, multislerp and karcher
(:mod:`~evomerge.ops.spherical`) take their coefficients from the angles between tensors
(nuslerp and multislerp use a base when given one and work without); sce
(:mod:`~evomerge.ops.sce`), nearswap and passthrough (:mod:`~evomerge.ops.pointwise`).

``split``, ``w`` and ``omega`` of region_crossover must be given (``t`` of slerp and nearswap,
``weight`` of the task-vector methods, linear, nuslerp and multislerp too); ``omega: None``
means linear interpolation.
Every task-vector method also takes ``lambda=1.0`` and ``int8_mask=False`` (accepted, no effect:
it only changes the dtype of mergekit's mask, not the result).

* Magnitude trim (ties): keeps exactly ``k = max(1, int(density * n))`` entries (mergekit
  0.1.5), the largest ``|tau|``; equal magnitudes rank the lower flat index first, so ties are
  broken deterministically (mergekit's unstable argsort leaves them unspecified).
  ``density >= 1`` keeps everything, ``density <= 0`` nothing. The threshold comes from a sampled,
  exact selection (:mod:`evomerge.ops.ranking`, O(n)), not a sort.
* Breadcrumbs: with ``keep = int(density * n)`` and ``top = int(gamma * n)`` (``top`` lowered
  to ``n - keep`` when both do not fit), keeps the entries ranked ``top .. top + keep - 1`` from
  the largest magnitude, ties ranked as above. ``density >= 1`` keeps everything (gamma is not
  applied, as in mergekit). Where ``top`` is 0 the ``keep`` largest are kept (as in
  mergekit 0.1.5).
* ``rescale`` after a magnitude or breadcrumbs trim multiplies the kept entries so the L1 norm
  of the task vector is unchanged (skipped when either norm is below 1e-7), as mergekit does.
* DARE: each model gets its own numpy SFC64 stream, seeded by one ``torch.randint(0, 2**62)``
  draw from ``generator`` (models in order; ``generator=None`` uses torch's global
  generator). The stream's 64-bit outputs are cut into four 16-bit draws (low quarter
  first) and entry ``i`` is kept when draw ``i`` is below ``round(density * 2**16)``, so
  the keep probability is density to within 2**-17 (a density that rounds to 2**16 keeps
  all, one that rounds to 0 drops all). The same seed gives the same tensor, whatever the
  block size. (mergekit draws ``torch.bernoulli``: masks cannot match bit for bit.) ``rescale``
  divides the kept entries by ``density`` (the DARE paper, and mergekit before it switched to
  L1-norm matching). ``density >= 1`` draws nothing and keeps all; ``density <= 0`` drops all
  (mergekit divides 0 by 0 there).
* Sign consensus (``*_ties``): the elected sign of an entry is that of the sum of the weighted
  sparsified task vectors (a zero sum elects +); an entry of a model counts when its weighted
  value has the elected sign (zeros never count). With ``normalize`` the sum is divided by the
  weights of the counted models, entry by entry (0 -> 1). Without consensus the divisor is the
  sum of all weights (``|sum| < 1e-8`` -> 1).
"""

from __future__ import annotations

from evomerge.core.registry import Registry
from evomerge.ops.method import BaseRole, MergeMethod, Parameters
from evomerge.ops.method_table import BUILT_IN

#: Every merge method by name: the built-in ones, then those users register.
MERGE_METHODS: Registry[MergeMethod] = Registry("merge method", "method")


def register_merge_method(method: MergeMethod) -> None:
    """Make ``method.name`` available to configs and recipes (replaces one of the same name)."""
    if not isinstance(method, MergeMethod):
        raise TypeError(f"expected a MergeMethod, got {type(method).__name__}")
    MERGE_METHODS.register(method.name, method)


def get_merge_method(name: str) -> MergeMethod:
    """The registered method ``name``; ValueError naming the closest and the known names."""
    if not isinstance(name, str) or name not in MERGE_METHODS:
        close = MERGE_METHODS.closest(str(name))
        hint = f"did you mean '{close}'? " if close else ""
        known = ", ".join(sorted(MERGE_METHODS))
        raise ValueError(f"unknown merge method '{name}'; {hint}known: {known}")
    return MERGE_METHODS.get(name)


for _method in BUILT_IN:
    register_merge_method(_method)
del _method

__all__ = [
    "MERGE_METHODS",
    "BaseRole",
    "MergeMethod",
    "Parameters",
    "get_merge_method",
    "register_merge_method",
]
