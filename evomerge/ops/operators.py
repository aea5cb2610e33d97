"""Per-tensor merge operators with mergekit's conventions, in a registry users can extend.

A merge method is a :class:`MergeMethod`: a function over one tensor of every input model plus
the names and defaults of its parameters. ``MERGE_METHODS`` holds the built-in ones under
mergekit's names (``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``,
``breadcrumbs``, ``breadcrumbs_ties``, ``slerp``, ``della``, ``della_linear``,
``model_stock``, ``nuslerp``, ``multislerp``, ``karcher``, ``sce``, ``nearswap``,
``passthrough``) plus M2N2's ``region_crossover`` and the data-aware ``fisher`` and ``regmean``
(:mod:`~evomerge.ops.data_aware`, whose statistics come from a pass over a fitness plug-in's
examples, :mod:`~evomerge.ops.statistics`); add your own without editing the package::

    from evomerge.ops.operators import MergeMethod, register_merge_method

    def mean(base, models, model_params, params, generator):
        return sum(models) / len(models)

    register_merge_method(MergeMethod("mean", mean, needs_base=False, model_params={}, params={}))

Conventions shared by every built-in method (so a mergekit recipe gives mergekit's tensors):

* Inputs are never modified. float16/bfloat16 inputs are computed in float32 and the result is
  rounded once to the inputs' dtype (mergekit computes in the input dtype, so half-precision
  results can differ in the last bit); float32/float64 inputs are computed in their own dtype.
* A parameter whose default is ``None`` is required: its key must be given. Unknown parameter
  names are errors (mergekit ignores them), so a typo never silently does nothing.
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
=================  ==========================================  ==================================

fisher and regmean take ``statistics`` (per model, this tensor's diagonal Fisher or its layer's
input Gram matrix) besides the tensors; ``MergeMethod.statistics`` names the kind they need
(``"fisher"`` or ``"gram"``), which the merge engine and recipe searches compute or read.

della/della_linear (:mod:`~evomerge.ops.della`) are task-vector methods with DELLA's
rank-dependent drops; model_stock, nuslerp, multislerp and karcher
(:mod:`~evomerge.ops.spherical`) take their coefficients from the angles between tensors
(nuslerp and multislerp use a base when given one and work without); sce
(:mod:`~evomerge.ops.sce`), nearswap and passthrough (:mod:`~evomerge.ops.pointwise`).

``omega`` of region_crossover must be given; ``None`` there means linear interpolation.
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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

import torch

from evomerge.ops.data_aware import fisher, regmean
from evomerge.ops.della import della_magprune
from evomerge.ops.interpolation import linear, region_crossover, slerp
from evomerge.ops.pointwise import nearswap, passthrough
from evomerge.ops.sce import sce
from evomerge.ops.spherical import karcher, model_stock, multislerp, nuslerp
from evomerge.ops.task_vectors import (
    breadcrumbs_trim,
    dare_drop,
    generalized_task_arithmetic,
    magnitude_trim,
)


@dataclass(frozen=True)
class MergeMethod:
    """A named per-tensor merge operator and its parameters.

    ``fn(base, models, model_params, params, generator)`` receives the parameters already
    completed with their defaults; ``model_params`` has one dict per model in ``models``.
    Defaults of ``None`` mark required parameters. ``random`` methods draw from ``generator``.
    ``optional_base`` methods use a base when one is given (task vectors against it) and work
    without one too. ``statistics`` methods (``"fisher"``, ``"gram"``) also receive, per model,
    that kind of statistic for the tensor (or None where there is none) as ``statistics=``.
    """

    name: str
    fn: Callable
    needs_base: bool
    model_params: Mapping[str, float | None]
    params: Mapping[str, float | bool | None]
    random: bool = False
    optional_base: bool = False
    statistics: str | None = None

    def __post_init__(self):
        # Read-only copies: a caller mutating its dict must not change a registered method.
        object.__setattr__(self, "model_params", MappingProxyType(dict(self.model_params)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __call__(
        self,
        base: torch.Tensor | None,
        models: Sequence[torch.Tensor],
        model_params: Sequence[Mapping] | None = None,
        params: Mapping | None = None,
        generator: torch.Generator | None = None,
        statistics: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Fill defaults, refuse missing/unknown parameters and mismatched shapes, then merge."""
        models = list(models)
        if self.needs_base and base is None:
            raise ValueError(f"{self.name} merges task vectors: a base tensor is required")
        _check_shapes(base, models)
        if model_params is None:
            model_params = [{} for _ in models]
        if len(model_params) != len(models):
            raise ValueError(
                f"{self.name}: {len(model_params)} model_params for {len(models)} models"
            )
        filled = [
            _fill(self.model_params, mp, f"{self.name}: model {i}")
            for i, mp in enumerate(model_params)
        ]
        params = _fill(self.params, params or {}, self.name)
        if self.statistics is None:
            return self.fn(base, models, filled, params, generator)
        return self.fn(base, models, filled, params, generator, statistics=statistics)


MERGE_METHODS: dict[str, MergeMethod] = {}


def register_merge_method(method: MergeMethod) -> None:
    """Make ``method.name`` available to configs and recipes (replaces one of the same name)."""
    if not isinstance(method, MergeMethod):
        raise TypeError(f"expected a MergeMethod, got {type(method).__name__}")
    MERGE_METHODS[method.name] = method


def get_merge_method(name: str) -> MergeMethod:
    """The registered method ``name``; ValueError listing the known names otherwise."""
    try:
        return MERGE_METHODS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(MERGE_METHODS))
        raise ValueError(f"unknown merge method '{name}'; known: {known}") from None


# --- parameter handling -------------------------------------------------------------------


def _fill(defaults: Mapping, given: Mapping, where: str) -> dict:
    """``given`` completed with ``defaults``; a key whose default is None must be given."""
    unknown = [k for k in given if k not in defaults]
    if unknown:
        known = ", ".join(defaults) or "none"
        raise ValueError(f"{where}: unknown parameter '{unknown[0]}' (known: {known})")
    missing = [k for k, d in defaults.items() if d is None and k not in given]
    if missing:
        raise ValueError(f"{where}: missing required parameter '{missing[0]}'")
    return {k: given.get(k, d) for k, d in defaults.items()}


def _check_shapes(base: torch.Tensor | None, models: Sequence[torch.Tensor]) -> None:
    shapes = [tuple(t.shape) for t in ([base] if base is not None else []) + models]
    if len(set(shapes)) > 1:
        raise ValueError(f"tensor shapes differ: {', '.join(str(s) for s in shapes)}")


# --- the built-in table (mergekit's names and per-method defaults) --------------------------


def _gta_method(name, sparsify, consensus, normalize, rescale, extra=None) -> MergeMethod:
    model_params = {"weight": None, "density": 1.0, **(extra or {})}
    params = {"normalize": normalize, "rescale": rescale, "lambda": 1.0, "int8_mask": False}
    fn = partial(generalized_task_arithmetic, sparsify=sparsify, consensus=consensus)
    random = sparsify in (dare_drop, della_magprune)
    return MergeMethod(name, fn, True, model_params, params, random=random)


for _method in (
    MergeMethod("linear", linear, False, {"weight": None}, {"normalize": True}),
    _gta_method("task_arithmetic", None, False, normalize=False, rescale=False),
    _gta_method("ties", magnitude_trim, True, normalize=True, rescale=False),
    _gta_method("dare_linear", dare_drop, False, normalize=False, rescale=True),
    _gta_method("dare_ties", dare_drop, True, normalize=False, rescale=True),
    _gta_method("breadcrumbs", breadcrumbs_trim, False, False, False, {"gamma": 0.01}),
    _gta_method("breadcrumbs_ties", breadcrumbs_trim, True, False, False, {"gamma": 0.01}),
    MergeMethod("slerp", slerp, False, {}, {"t": None}),
    MergeMethod(
        "region_crossover",
        region_crossover,
        False,
        {},
        {"offset": 0, "split": None, "w": None, "omega": None},
    ),
    _gta_method("della", della_magprune, True, True, True, {"epsilon": 0.15}),
    _gta_method("della_linear", della_magprune, False, False, True, {"epsilon": 0.15}),
    MergeMethod("model_stock", model_stock, True, {}, {"filter_wise": False}),
    MergeMethod(
        "nuslerp",
        nuslerp,
        False,
        {"weight": None},
        {"nuslerp_flatten": True, "nuslerp_row_wise": False},
        optional_base=True,
    ),
    MergeMethod(
        "multislerp",
        multislerp,
        False,
        {"weight": None},
        {"normalize_weights": True, "eps": 1e-8},
        optional_base=True,
    ),
    MergeMethod("karcher", karcher, False, {}, {"max_iter": 10, "tol": 1e-5}),
    MergeMethod("sce", sce, True, {}, {"select_topk": 1.0, "int8_mask": False}),
    MergeMethod("nearswap", nearswap, True, {}, {"t": None}),
    MergeMethod("passthrough", passthrough, False, {"scale": 1.0}, {}),
    MergeMethod(
        "fisher", fisher, False, {"weight": 1.0}, {"fisher_floor": 1e-6}, statistics="fisher"
    ),
    MergeMethod("regmean", regmean, False, {"weight": 1.0}, {"alpha": 0.9}, statistics="gram"),
):
    register_merge_method(_method)
del _method
