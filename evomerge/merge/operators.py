"""Per-tensor merge operators with mergekit's conventions, in a registry users can extend.

A merge method is a :class:`MergeMethod`: a function over one tensor of every input model plus
the names and defaults of its parameters. ``MERGE_METHODS`` holds the built-in ones under
mergekit's names (``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``,
``breadcrumbs``, ``breadcrumbs_ties``, ``slerp``) plus M2N2's ``region_crossover``; add your
own without editing the package::

    from evomerge.merge.operators import MergeMethod, register_merge_method

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
region_crossover   -                                           offset=0, split, w, omega
=================  ==========================================  ==================================

``omega`` of region_crossover must be given; ``None`` there means linear interpolation.
Every task-vector method also takes ``lambda=1.0`` and ``int8_mask=False`` (accepted, no effect:
it only changes the dtype of mergekit's mask, not the result).

* Magnitude trim (ties): keeps exactly ``k = int(density * n)`` entries, the largest ``|tau|``;
  equal magnitudes rank the lower flat index first, so ties are broken deterministically
  (mergekit's unstable argsort leaves them unspecified). ``density >= 1`` keeps everything,
  ``k = 0`` keeps nothing (mergekit asserts). The threshold comes from a selection
  (``numpy.partition``, O(n)), not a sort.
* Breadcrumbs: with ``keep = int(density * n)`` and ``top = int(gamma * n)`` (``top`` lowered
  to ``n - keep`` when both do not fit), keeps the entries ranked ``top .. top + keep - 1`` from
  the largest magnitude, ties ranked as above. ``density >= 1`` keeps everything (gamma is not
  applied, as in mergekit). Where ``top`` is 0 mergekit's slice ``[n_bot:-0]`` is empty and
  drops the whole task vector; here the ``keep`` largest are kept, as intended.
* ``rescale`` after a magnitude or breadcrumbs trim multiplies the kept entries so the L1 norm
  of the task vector is unchanged (skipped when either norm is below 1e-7), as mergekit does.
* DARE: entry ``i`` is kept when ``u_i < density`` for ``u = torch.rand(shape, generator)``
  (one float32 draw per entry, models drawn in order from the one CPU generator: the same
  seed gives the same tensor; ``generator=None`` uses torch's global generator). ``rescale``
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

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

import torch

from ..genome.dense import slerp_coefficients

#: mergekit's SLERP: above this |cos(angle)| the tensors are colinear and interpolated linearly.
DOT_THRESHOLD = 0.9995
#: mergekit's SLERP: a tensor whose norm is at most this is not normalised.
NORM_EPS = 1e-8
#: mergekit: a summed weight below this (without sign consensus) is replaced by 1.
WEIGHT_EPS = 1e-8
#: mergekit: L1 rescaling is skipped when either norm is below this.
RESCALE_EPS = 1e-7
#: Elements per float64 chunk when summing dot products (bounds the temporaries).
_CHUNK = 1 << 22


@dataclass(frozen=True)
class MergeMethod:
    """A named per-tensor merge operator and its parameters.

    ``fn(base, models, model_params, params, generator)`` receives the parameters already
    completed with their defaults; ``model_params`` has one dict per model in ``models``.
    Defaults of ``None`` mark required parameters. ``random`` methods draw from ``generator``.
    """

    name: str
    fn: Callable
    needs_base: bool
    model_params: Mapping[str, float | None]
    params: Mapping[str, float | bool | None]
    random: bool = False

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
        return self.fn(base, models, filled, _fill(self.params, params or {}, self.name), generator)


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


def _number(value, name: str) -> float:
    """A real parameter value; bools and None are refused with the parameter's name."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"parameter '{name}' must be a number, got {value!r}")
    return float(value)


def _index(value, name: str) -> int:
    """An integral parameter value (a float like 3.0 is accepted)."""
    number = _number(value, name)
    if not number.is_integer():
        raise ValueError(f"parameter '{name}' must be an integer, got {value!r}")
    return int(number)


def _flag(value, name: str) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"parameter '{name}' must be true or false, got {value!r}")


def _fraction(mp: Mapping, name: str) -> float:
    value = _number(mp[name], name)
    if not value >= 0.0:
        raise ValueError(f"parameter '{name}' must be >= 0, got {value!r}")
    return value


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half-precision (and non-float) inputs; float32/float64 stay as they are."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


# --- magnitude ranking ----------------------------------------------------------------------


def _kth_largest(x: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """The k-th largest |x| for each k in ``ks`` (1 <= k < numel), by selection, not sorting."""
    if not ks:
        return {}
    n = x.numel()
    mag = x.abs().reshape(-1)
    if mag.device.type == "cpu":
        arr = mag.numpy()
        arr.partition([n - k for k in ks])  # O(n) introselect, in place on our own copy
        return {k: float(arr[n - k]) for k in ks}
    return {k: torch.kthvalue(mag, n - k + 1).values.item() for k in ks}


def _top_mask(mag: torch.Tensor, k: int, kth: Mapping[int, float]) -> torch.Tensor:
    """Exactly the ``k`` largest of ``mag``; equal magnitudes rank lower flat index first."""
    n = mag.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=mag.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=mag.device)
    v = kth[k]
    mask = mag > v
    short = k - int(torch.count_nonzero(mask))
    if short > 0 and v > 0:  # tied zeros are zero whether kept or not: skip listing them
        ties = torch.nonzero(mag == v).squeeze(1)  # ascending flat indices
        mask[ties[:short]] = True
    return mask


def _rank_band(delta: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Mask of the entries ranked ``lo .. hi-1`` by magnitude (rank 0 the largest)."""
    n = delta.numel()
    kth = _kth_largest(delta, sorted({k for k in (lo, hi) if 0 < k < n}))
    mag = delta.abs().reshape(-1)
    mask = _top_mask(mag, hi, kth)
    if lo > 0:
        mask &= ~_top_mask(mag, lo, kth)
    return mask


def _apply_mask(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Zero the dropped entries in place; with ``rescale`` restore the L1 norm (mergekit)."""
    flat = delta.view(-1)
    before = flat.abs().sum() if rescale else None
    flat.masked_fill_(~mask, 0.0)
    if rescale:
        after = flat.abs().sum()
        if before >= RESCALE_EPS and after >= RESCALE_EPS:
            flat.mul_(before / after)
    return delta


# --- sparsifiers: (delta we own, model params, rescale, generator) -> delta ----------------


def _magnitude(delta, mp, rescale, generator):
    """TIES trim: keep the top ``k = int(density * n)`` entries by magnitude."""
    density = _fraction(mp, "density")
    if density >= 1:
        return delta
    k = int(density * delta.numel())
    return _apply_mask(delta, _rank_band(delta, 0, k), rescale)


def _breadcrumbs(delta, mp, rescale, generator):
    """Drop the top ``int(gamma * n)`` outliers and the smallest, keeping ``int(density * n)``."""
    density, gamma = _fraction(mp, "density"), _fraction(mp, "gamma")
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    top = int(gamma * n)
    if n - keep - top < 0:  # fewer small entries than needed: drop fewer outliers
        top = n - keep
    return _apply_mask(delta, _rank_band(delta, top, top + keep), rescale)


def _dare(delta, mp, rescale, generator):
    """DARE: keep each entry with probability ``density`` (one uniform draw per entry)."""
    density = _fraction(mp, "density")
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_()
    draw = torch.rand(delta.shape, generator=generator, dtype=torch.float32)
    delta.masked_fill_((draw >= density).to(delta.device), 0.0)
    del draw
    if rescale:
        delta.div_(density)
    return delta


# --- generalized task arithmetic ------------------------------------------------------------


def _task_vectors(b, models, model_params, rescale, generator, sparsify):
    """Weighted, sparsified task vectors ``w_k * sparsify(theta_k - b)`` and the weights."""
    deltas, weights = [], []
    for theta, mp in zip(models, model_params, strict=True):
        weight = _number(mp["weight"], "weight")
        delta = theta.to(b.dtype) - b
        if sparsify is not None:
            delta = sparsify(delta, mp, rescale, generator)
        deltas.append(delta.mul_(weight))
        weights.append(weight)
    return deltas, weights


def _plain_sum(deltas, weights):
    """Sum of the task vectors and the (scalar) sum of weights; ~0 sums become 1 (mergekit)."""
    mixed = deltas[0]
    for d in deltas[1:]:
        mixed.add_(d)
    divisor = torch.tensor(weights, dtype=mixed.dtype).sum().item()
    return mixed, 1.0 if abs(divisor) < WEIGHT_EPS else divisor


def _consensus_sum(deltas, weights):
    """TIES disjoint sum: per entry, the values whose sign is that of the sum (>= 0 -> +).

    Zero entries (trimmed or unchanged) have no sign and never count, neither in the sum nor
    in the per-entry divisor (the weights of the agreeing models); zero divisors become 1.
    """
    total = deltas[0].clone()
    for d in deltas[1:]:
        total.add_(d)
    positive = total >= 0
    mixed, divisor = total.zero_(), torch.zeros_like(total)
    for d, w in zip(deltas, weights, strict=True):
        agree = torch.where(positive, d > 0, d < 0)
        mixed.add_(d.masked_fill_(~agree, 0.0))
        divisor.add_(agree, alpha=w)
    return mixed, divisor.masked_fill_(divisor == 0, 1.0)


def _generalized_task_arithmetic(
    base, models, model_params, params, generator, *, sparsify, consensus
):
    """``base + lambda * mix_k(w_k * sparsify(theta_k - base))`` (mergekit's GTA)."""
    if not models:
        return base.clone()
    rescale = _flag(params["rescale"], "rescale")
    b = base.to(_work_dtype(base))
    deltas, weights = _task_vectors(b, models, model_params, rescale, generator, sparsify)
    mixed, divisor = (_consensus_sum if consensus else _plain_sum)(deltas, weights)
    del deltas
    if _flag(params["normalize"], "normalize"):
        mixed.div_(divisor)
    lam = _number(params["lambda"], "lambda")
    if lam != 1:
        mixed.mul_(lam)
    return mixed.add_(b).to(base.dtype)


# --- linear, slerp, region crossover --------------------------------------------------------


def _linear(base, models, model_params, params, generator):
    """``sum_k w_k theta_k``, divided by ``sum_k w_k`` when ``normalize``; base is ignored.

    A weight sum with ``|sum| < 1e-8`` is replaced by 1, as generalized task arithmetic does
    (mergekit's linear divides by it and returns inf/NaN).
    """
    if not models:
        raise ValueError("linear needs at least one model")
    weights = [_number(mp["weight"], "weight") for mp in model_params]
    work = _work_dtype(models[0])
    mixed = None
    for theta, w in zip(models, weights, strict=True):
        term = theta.to(work) * w
        mixed = term if mixed is None else mixed.add_(term)
    if _flag(params["normalize"], "normalize"):
        divisor = torch.tensor(weights, dtype=work).sum().item()
        mixed.div_(1.0 if abs(divisor) < WEIGHT_EPS else divisor)
    return mixed.to(models[0].dtype)


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> accumulated in float64, chunk by chunk to bound the temporaries."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for i in range(0, a.numel(), _CHUNK):
        total += torch.dot(a[i : i + _CHUNK].double(), b[i : i + _CHUNK].double()).item()
    return total


def _slerp(base, models, model_params, params, generator):
    """mergekit's SLERP from ``base`` (t = 0) to ``models[0]`` (t = 1), per tensor.

    The cosine is that of the flattened tensors, each divided by its norm only when the norm
    exceeds 1e-8 (so a zero tensor gives cosine 0, a quarter turn, as in mergekit). Where
    ``|cos| > 0.9995`` (parallel or anti-parallel) the result is ``(1 - t) v0 + t v1``.
    Norms and the cosine are accumulated in float64 and the coefficients are Python floats
    (mergekit: float32 numpy), so results agree with mergekit to float32 rounding.
    """
    if base is None or len(models) != 1:
        raise ValueError("slerp merges two tensors: a base (t = 0) and one model (t = 1)")
    t = _number(params["t"], "t")
    work = _work_dtype(base)
    v0, v1 = base.to(work), models[0].to(work)
    n0, n1 = math.sqrt(_dot64(v0, v0)), math.sqrt(_dot64(v1, v1))
    d0 = n0 if n0 > NORM_EPS else 1.0
    d1 = n1 if n1 > NORM_EPS else 1.0
    dot = _dot64(v0, v1) / (d0 * d1)
    if abs(dot) > DOT_THRESHOLD:
        return (v0 * (1 - t)).add_(v1 * t).to(base.dtype)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    s0 = math.sin(theta - theta * t) / sin_theta
    s1 = math.sin(theta * t) / sin_theta
    return (v0 * s0).add_(v1 * s1).to(base.dtype)


def _region_crossover(base, models, model_params, params, generator):
    """M2N2's split-point SLERP restricted to one tensor of the whole model.

    The element at global flat position ``offset + i`` uses ``t = w`` before ``split`` and
    ``t = 1 - w`` from it on, with the coefficients of the ONE whole-model angle ``omega``
    (None: linear), computed exactly as :func:`evomerge.genome.dense.split_slerp` does, so the
    concatenation over all tensors equals ``split_slerp`` on the concatenated vectors.
    """
    if len(models) != 2:
        raise ValueError(f"region_crossover merges two models, got {len(models)}")
    offset = _index(params["offset"], "offset")
    split = _index(params["split"], "split")
    w = _number(params["w"], "w")
    omega = 0.0 if params["omega"] is None else _number(params["omega"], "omega")
    sin_omega = 0.0 if params["omega"] is None else math.sin(omega)
    work = _work_dtype(models[0])
    a, b = (m.to(work).reshape(-1) for m in models)
    local = min(max(split - offset, 0), a.numel())
    child = torch.empty_like(a)
    for part, t in ((slice(0, local), w), (slice(local, None), 1.0 - w)):
        ca, cb = slerp_coefficients(t, omega, sin_omega)
        torch.add(a[part] * ca, b[part], alpha=cb, out=child[part])
    return child.view(models[0].shape).to(models[0].dtype)


# --- the built-in table (mergekit's names and per-method defaults) --------------------------


def _gta_method(name, sparsify, consensus, normalize, rescale, extra=None) -> MergeMethod:
    model_params = {"weight": None, "density": 1.0, **(extra or {})}
    params = {"normalize": normalize, "rescale": rescale, "lambda": 1.0, "int8_mask": False}
    fn = partial(_generalized_task_arithmetic, sparsify=sparsify, consensus=consensus)
    return MergeMethod(name, fn, True, model_params, params, random=sparsify is _dare)


for _method in (
    MergeMethod("linear", _linear, False, {"weight": None}, {"normalize": True}),
    _gta_method("task_arithmetic", None, False, normalize=False, rescale=False),
    _gta_method("ties", _magnitude, True, normalize=True, rescale=False),
    _gta_method("dare_linear", _dare, False, normalize=False, rescale=True),
    _gta_method("dare_ties", _dare, True, normalize=False, rescale=True),
    _gta_method("breadcrumbs", _breadcrumbs, False, False, False, {"gamma": 0.01}),
    _gta_method("breadcrumbs_ties", _breadcrumbs, True, False, False, {"gamma": 0.01}),
    MergeMethod("slerp", _slerp, False, {}, {"t": None}),
    MergeMethod(
        "region_crossover",
        _region_crossover,
        False,
        {},
        {"offset": 0, "split": None, "w": None, "omega": None},
    ),
):
    register_merge_method(_method)
del _method
