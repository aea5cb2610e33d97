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
  ``k = 0`` keeps nothing (mergekit asserts). The threshold comes from a sampled,
  exact selection (:mod:`evomerge.merge.ranking`, O(n)), not a sort.
* Breadcrumbs: with ``keep = int(density * n)`` and ``top = int(gamma * n)`` (``top`` lowered
  to ``n - keep`` when both do not fit), keeps the entries ranked ``top .. top + keep - 1`` from
  the largest magnitude, ties ranked as above. ``density >= 1`` keeps everything (gamma is not
  applied, as in mergekit). Where ``top`` is 0 mergekit's slice ``[n_bot:-0]`` is empty and
  drops the whole task vector; here the ``keep`` largest are kept, as intended.
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

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

import numpy as np
import torch

from ..genome.dense import slerp_coefficients
from .ranking import RankCut, rank_cuts

#: mergekit's SLERP: above this |cos(angle)| the tensors are colinear and interpolated linearly.
DOT_THRESHOLD = 0.9995
#: mergekit's SLERP: a tensor whose norm is at most this is not normalised.
NORM_EPS = 1e-8
#: mergekit: a summed weight below this (without sign consensus) is replaced by 1.
WEIGHT_EPS = 1e-8
#: mergekit: L1 rescaling is skipped when either norm is below this.
RESCALE_EPS = 1e-7
#: Entries per block of the fused per-tensor passes: a block's float32 temporaries
#: (a few of 512 KiB) stay in a core's cache, so each extra operation costs little.
BLOCK = 1 << 17


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


# --- blocks ---------------------------------------------------------------------------------


def _slices(n: int, device: torch.device) -> Iterator[slice]:
    """Flat slices of ``BLOCK`` entries on CPU (one slice on an accelerator)."""
    step = BLOCK if device.type == "cpu" else max(n, 1)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


# --- sparsifiers: (base, theta, model params, rescale, generator, dtype) -> _Keep or None ----


class _Keep:
    """Which entries of one task vector survive; ``start()`` gives a fresh block-order masker.

    ``divide`` (DARE's rescale) divides the kept entries; ``l1`` asks for the L1-norm rescale.
    """

    divide: float | None = None
    l1: bool = False

    def start(self) -> Callable[[slice, torch.Tensor], torch.Tensor]:
        raise NotImplementedError


class _RankKeep(_Keep):
    """Entries ranked ``lo .. hi-1`` by magnitude (``lo`` None: from the largest).

    The band is ``top(hi) - top(lo)``: the top ``lo`` are inside the top ``hi``, and
    ``x - x`` and ``x - 0`` are exact, so the subtraction only drops entries.
    """

    def __init__(self, hi: RankCut, lo: RankCut | None, l1: bool):
        self.hi, self.lo, self.l1 = hi, lo, l1

    def start(self):
        def apply(sl, d):
            kept = self.hi.keep(sl.start, d)
            return kept if self.lo is None else kept.sub_(self.lo.keep(sl.start, d))

        return apply


class _Draws16:
    """A stream of 16-bit uniform draws: each 64-bit SFC64 output gives four, low first.

    ``take(m)`` returns the next ``m`` draws whatever the sizes asked before, so a merge
    draws the same bits for any block size.
    """

    def __init__(self, seed: int):
        self.source = np.random.SFC64(seed)
        self.rest = np.empty(0, dtype=np.uint16)

    def take(self, m: int) -> np.ndarray:
        need = m - self.rest.size
        if need > 0:
            fresh = self.source.random_raw((need + 3) // 4).astype("<u8", copy=False)
            pool = np.concatenate([self.rest, fresh.view("<u2")])
        else:
            pool = self.rest
        out, self.rest = pool[:m], pool[m:]
        return out


class _DrawKeep(_Keep):
    """DARE: an entry survives when its 16-bit draw is below ``round(density * 2**16)``.

    Each model has its own :class:`_Draws16` stream, read block by block as the fused pass
    advances (the draws stay in cache; 16 bits an entry cost a quarter of a 64-bit output).
    ``draws`` None drops every entry (density <= 0 or below 2**-17).
    """

    def __init__(self, draws: _Draws16 | None, threshold: int, divide: float | None):
        self.draws, self.threshold, self.divide = draws, threshold, divide

    def start(self):
        def apply(sl, d):
            if self.draws is None:
                return d.zero_()
            kept = self.draws.take(sl.stop - sl.start) < np.uint16(self.threshold)
            return d.mul_(torch.from_numpy(kept.view(np.uint8)).to(d.device, d.dtype))

        return apply


def _magnitudes(b, theta, work):
    """Block generator and sampler of ``|theta - b|`` (both flat) in ``work`` precision."""

    def blocks():
        for sl in _slices(b.numel(), b.device):
            yield sl.start, (theta[sl].to(work) - b[sl].to(work)).abs_()

    def sample(idx):
        idx = idx.to(b.device)
        return (theta[idx].to(work) - b[idx].to(work)).abs_()

    return blocks, sample


def _magnitude(b, theta, mp, rescale, generator, work):
    """TIES trim: keep the top ``k = int(density * n)`` entries by magnitude."""
    density = _fraction(mp, "density")
    if density >= 1:
        return None
    n = b.numel()
    k = int(density * n)
    blocks, sample = _magnitudes(b, theta, work)
    cuts = rank_cuts(blocks, n, [k], sample)
    return _RankKeep(cuts[k], None, rescale)


def _breadcrumbs(b, theta, mp, rescale, generator, work):
    """Drop the top ``int(gamma * n)`` outliers and the smallest, keeping ``int(density * n)``."""
    density, gamma = _fraction(mp, "density"), _fraction(mp, "gamma")
    if density >= 1:
        return None
    n = b.numel()
    keep = int(density * n)
    top = int(gamma * n)
    if n - keep - top < 0:  # fewer small entries than needed: drop fewer outliers
        top = n - keep
    blocks, sample = _magnitudes(b, theta, work)
    cuts = rank_cuts(blocks, n, [top + keep, top], sample)
    return _RankKeep(cuts[top + keep], cuts[top] if top > 0 else None, rescale)


def _dare(b, theta, mp, rescale, generator, work):
    """DARE: keep each entry with probability ``density`` (one uniform draw per entry)."""
    density = _fraction(mp, "density")
    if density >= 1:
        return None
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    threshold = round(density * 2**16)
    if threshold >= 2**16:
        return None
    if threshold <= 0:
        return _DrawKeep(None, 0, None)
    return _DrawKeep(_Draws16(seed), threshold, density if rescale else None)


# --- generalized task arithmetic ------------------------------------------------------------


def _l1_factor(b, theta, keep: _Keep, work) -> float | None:
    """mergekit's rescale: ``|tau|_1 / |trimmed tau|_1``, None when either is below 1e-7."""
    before = after = 0.0
    apply = keep.start()
    for sl in _slices(b.numel(), b.device):
        d = theta[sl].to(work) - b[sl].to(work)
        before += float(d.abs().sum(dtype=torch.float64))
        after += float(apply(sl, d).abs_().sum(dtype=torch.float64))
    return before / after if before >= RESCALE_EPS and after >= RESCALE_EPS else None


def _replace_zeros(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its zeros set to 1, in place: ``t + (1 - |sign t|)`` (exact, no masks)."""
    return t.add_(t.abs().sign_().neg_().add_(1.0))


def _consensus_block(deltas, weights, normalize):
    """TIES disjoint sum of one block: per entry, the values whose sign is that of the sum.

    The elected sign is ``copysign(1, sum)``: + for a sum of +0 (mergekit: ``sum >= 0``);
    a sum of -0 only arises when every value is -0 and nothing counts either way. A value
    agrees when ``value * sign > 0``: ``clamp(value * sign, min=0) * sign`` is the value or 0
    and its ``sign()`` the 0/1 agreement, all in fast float kernels. Zero entries (trimmed or
    unchanged) never count, neither in the sum nor in the per-entry divisor (the weights of
    the agreeing models); zero divisors become 1.
    """
    total = deltas[0].clone()
    for d in deltas[1:]:
        total.add_(d)
    sign = torch.copysign(torch.ones((), dtype=total.dtype, device=total.device), total)
    mixed = total.zero_()
    divisor = torch.zeros_like(mixed) if normalize else None
    for d, w in zip(deltas, weights, strict=True):
        agreeing = d.mul_(sign).clamp_(min=0)
        mixed.addcmul_(agreeing, sign)
        if divisor is not None:
            divisor.add_(agreeing.sign_(), alpha=w)
    if divisor is not None:
        _replace_zeros(divisor)
    return mixed, divisor


def _generalized_task_arithmetic(
    base, models, model_params, params, generator, *, sparsify, consensus
):
    """``base + lambda * mix_k(w_k * sparsify(theta_k - base))`` (mergekit's GTA).

    Thresholds (and DARE's draws) are settled first, model by model; then one fused pass over
    blocks of ``BLOCK`` entries computes every task vector, trims, weights, mixes and rounds,
    so the temporaries of a block stay in cache and nothing of full size but the output and
    DARE's draws is ever allocated.
    """
    if not models:
        return base.clone()
    rescale = _flag(params["rescale"], "rescale")
    normalize = _flag(params["normalize"], "normalize")
    lam = _number(params["lambda"], "lambda")
    work = _work_dtype(base)
    b = base.reshape(-1)
    thetas = [m.reshape(-1) for m in models]
    weights, keeps = [], []
    for theta, mp in zip(thetas, model_params, strict=True):
        weights.append(_number(mp["weight"], "weight"))
        keeps.append(None if sparsify is None else sparsify(b, theta, mp, rescale, generator, work))
    factors = [
        _l1_factor(b, t, k, work) if k is not None and k.l1 else None
        for t, k in zip(thetas, keeps, strict=True)
    ]
    divisor = torch.tensor(weights, dtype=work).sum().item()
    divisor = 1.0 if abs(divisor) < WEIGHT_EPS else divisor
    appliers = [k.start() if k is not None else None for k in keeps]
    out = torch.empty(b.shape, dtype=base.dtype, device=base.device)
    for sl in _slices(b.numel(), b.device):
        bb = b[sl].to(work)
        deltas = []
        for theta, w, keep, apply, factor in zip(
            thetas, weights, keeps, appliers, factors, strict=True
        ):
            d = theta[sl].to(work) - bb
            if apply is not None:
                d = apply(sl, d)
                if keep.divide is not None:
                    d.div_(keep.divide)
            if factor is not None:
                d.mul_(factor)
            deltas.append(d.mul_(w))
        if consensus:
            mixed, block_divisor = _consensus_block(deltas, weights, normalize)
        else:
            mixed, block_divisor = deltas[0], divisor
            for d in deltas[1:]:
                mixed.add_(d)
        if normalize:
            mixed.div_(block_divisor)
        if lam != 1:
            mixed.mul_(lam)
        out[sl] = mixed.add_(bb)
    return out.view(base.shape)


# --- linear, slerp, region crossover --------------------------------------------------------


def _linear(base, models, model_params, params, generator):
    """``sum_k w_k theta_k``, divided by ``sum_k w_k`` when ``normalize``; base is ignored.

    A weight sum with ``|sum| < 1e-8`` is replaced by 1, as generalized task arithmetic does
    (mergekit's linear divides by it and returns inf/NaN).
    """
    if not models:
        raise ValueError("linear needs at least one model")
    weights = [_number(mp["weight"], "weight") for mp in model_params]
    normalize = _flag(params["normalize"], "normalize")
    work = _work_dtype(models[0])
    divisor = torch.tensor(weights, dtype=work).sum().item()
    divisor = 1.0 if abs(divisor) < WEIGHT_EPS else divisor
    flats = [m.reshape(-1) for m in models]
    out = torch.empty(flats[0].shape, dtype=models[0].dtype, device=models[0].device)
    for sl in _slices(out.numel(), out.device):
        mixed = None
        for theta, w in zip(flats, weights, strict=True):
            term = theta[sl].to(work) * w
            mixed = term if mixed is None else mixed.add_(term)
        if normalize:
            mixed.div_(divisor)
        out[sl] = mixed
    return out.view(models[0].shape)


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
    v0, v1 = base.reshape(-1), models[0].reshape(-1)
    s00 = s11 = s01 = 0.0
    for sl in _slices(v0.numel(), v0.device):
        a, c = v0[sl].double(), v1[sl].double()
        s00 += torch.dot(a, a).item()
        s11 += torch.dot(c, c).item()
        s01 += torch.dot(a, c).item()
    n0, n1 = math.sqrt(s00), math.sqrt(s11)
    d0 = n0 if n0 > NORM_EPS else 1.0
    d1 = n1 if n1 > NORM_EPS else 1.0
    dot = s01 / (d0 * d1)
    if abs(dot) > DOT_THRESHOLD:
        c0, c1 = 1 - t, t
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        c0 = math.sin(theta - theta * t) / sin_theta
        c1 = math.sin(theta * t) / sin_theta
    out = torch.empty(v0.shape, dtype=base.dtype, device=base.device)
    for sl in _slices(v0.numel(), v0.device):
        out[sl] = (v0[sl].to(work) * c0).add_(v1[sl].to(work) * c1)
    return out.view(base.shape)


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
