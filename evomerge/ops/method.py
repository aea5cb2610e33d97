"""What a merge method declares about itself, so callers ask the declaration, not the name.

A :class:`MergeMethod` is a per-tensor kernel plus its declaration: which parameters must be
given and which have defaults (:class:`Parameters`, per model and global), what the base model
is to it (:class:`BaseRole`), whether it draws random numbers or needs statistics, and its
name in mergekit (None where mergekit has no such method). The merge engine, merge configs,
recipe searches and the mergekit export all read these fields; none tests a method's name.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

import torch


class BaseRole(str, Enum):
    """What a method does with a base model.

    ``none``: it has no base; a mergekit ``base_model`` is one more input model.
    ``required``: it merges task vectors ``theta_k - base``; a base must be given.
    ``optional``: task vectors against the base when one is given, the models themselves
    when not (nuslerp, multislerp).
    ``endpoint``: the base is one end of an interpolation and exactly one model the other
    (slerp: t = 0 is the base); a base must be given, and mergekit lists it among the models.
    """

    NONE = "none"
    REQUIRED = "required"
    OPTIONAL = "optional"
    ENDPOINT = "endpoint"

    @property
    def takes_base(self) -> bool:
        """Whether a named base is this method's base rather than one more input model."""
        return self is not BaseRole.NONE

    @property
    def needs_base(self) -> bool:
        """Whether the method cannot merge without a base."""
        return self in (BaseRole.REQUIRED, BaseRole.ENDPOINT)


@dataclass(frozen=True)
class Parameters:
    """A method's parameters: the names that must be given, and the others with defaults.

    A required parameter has no default; any value may be given for it, None included
    (region_crossover's ``omega: None`` means linear interpolation).
    """

    required: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        required = (self.required,) if isinstance(self.required, str) else tuple(self.required)
        both = [n for n in required if n in self.defaults]
        if both:
            raise ValueError(f"parameter '{both[0]}' is both required and has a default")
        object.__setattr__(self, "required", required)
        # A read-only copy: a caller mutating its dict must not change a registered method.
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    @classmethod
    def from_defaults(cls, table: Mapping[str, Any]) -> Parameters:
        """The earlier form, ``{name: default}`` with None marking a required parameter (kept so
        methods written against it register unchanged)."""
        required = tuple(n for n, d in table.items() if d is None)
        return cls(required, {n: d for n, d in table.items() if d is not None})

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.required, *self.defaults)

    def __contains__(self, name: object) -> bool:
        return name in self.required or name in self.defaults

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.required) + len(self.defaults)

    def fill(self, given: Mapping, where: str) -> dict:
        """``given`` completed with the defaults; unknown or missing names are one-line errors."""
        unknown = [k for k in given if k not in self]
        if unknown:
            known = ", ".join(self.names) or "none"
            raise ValueError(f"{where}: unknown parameter '{unknown[0]}' (known: {known})")
        missing = [k for k in self.required if k not in given]
        if missing:
            raise ValueError(f"{where}: missing required parameter '{missing[0]}'")
        filled = {k: given[k] for k in self.required}
        filled.update({k: given.get(k, d) for k, d in self.defaults.items()})
        return filled


@dataclass(frozen=True)
class Range:
    """The values one parameter accepts, so a config is checked where it is read.

    A number in ``[low, high]`` (``low_open``/``high_open``: the end itself is excluded),
    always finite; ``integer``: a whole number; ``flag``: true or false (0 or 1);
    ``none``: None is accepted too (region_crossover's ``omega``).
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    flag: bool = False
    none: bool = False

    def describe(self) -> str:
        if self.flag:
            return "true or false"
        kind = "a whole number" if self.integer else "a finite number"
        if self.low == -math.inf and self.high == math.inf:
            return kind
        if self.high == math.inf:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not accepted (a phrase), or None."""
        if value is None and self.none:
            return None
        if self.flag:
            ok = isinstance(value, bool) or (isinstance(value, numbers.Real) and value in (0, 1))
            return None if ok else f"got {value!r}; it must be true or false"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"got {value!r}; it must be {self.describe()}"
        number = float(value)
        if not math.isfinite(number):
            return f"got {value!r}; it must be {self.describe()}"
        if self.integer and not number.is_integer():
            return f"got {value!r}; it must be {self.describe()}"
        if not self.holds(number, number):
            return f"got {value!r}; it must be {self.describe()}"
        return None

    def holds(self, low: float, high: float) -> bool:
        """Whether every value in ``[low, high]`` is accepted (a gene's range)."""
        if not (math.isfinite(low) and math.isfinite(high)):
            return False
        above = low > self.low if self.low_open else low >= self.low
        below = high < self.high if self.high_open else high <= self.high
        return above and below


#: an undeclared parameter: a finite number, or a switch
ANY_FINITE = Range()
FLAG = Range(flag=True)
FRACTION = Range(0.0, 1.0)
NON_NEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_open=True)


def _parameters(value, where: str) -> Parameters:
    if isinstance(value, Parameters):
        return value
    if value is None:
        return Parameters()
    if isinstance(value, Mapping):
        return Parameters.from_defaults(value)
    raise TypeError(f"{where}: expected Parameters(required=..., defaults=...), got {value!r}")


def _role(base, needs_base, optional_base) -> BaseRole:
    if needs_base is not None or optional_base:  # the earlier keywords
        if base is not None:
            raise TypeError("give base=BaseRole...; needs_base/optional_base are its older form")
        if optional_base:
            return BaseRole.OPTIONAL
        return BaseRole.REQUIRED if needs_base else BaseRole.NONE
    if base is None:
        return BaseRole.NONE
    if isinstance(base, bool):  # the earlier positional needs_base
        return BaseRole.REQUIRED if base else BaseRole.NONE
    try:
        return BaseRole(base)
    except ValueError:
        roles = ", ".join(r.value for r in BaseRole)
        raise ValueError(f"base: '{base}' is not a base role ({roles})") from None


#: The statistics a method may ask for; the ``merged_*`` kinds are taken through the merge
#: itself (once per ``evomerge merge``, layer by layer), ``coefficients`` learnt over the whole
#: model first, the others once per model.
STATISTICS_KINDS = ("fisher", "gram", "merged_gram", "merged_cross_gram", "coefficients")
SEQUENTIAL_KINDS = ("merged_gram", "merged_cross_gram")


@dataclass(frozen=True, init=False)
class MergeMethod:
    """A named per-tensor merge kernel and its declaration.

    ``fn(base, models, model_params, params, generator)`` receives the parameters already
    completed with their defaults; ``model_params`` has one dict per model in ``models``;
    ``base`` is the base's tensor or None (see :class:`BaseRole`). ``random`` methods draw
    from ``generator``. ``statistics`` methods (``"fisher"``, ``"gram"``, ``"merged_gram"``: Grams
    through the merged earlier layers, RegMean++; ``"merged_cross_gram"``: those stacked with
    the cross Gram of merged and own inputs, PLeaS; ``"coefficients"``: coefficients that
    ``learner`` learns over the whole model first, AdaMerging and FW-Merging) also receive, per
    model, that kind of statistic for the tensor (or None where there is none) as
    ``statistics=``. ``learner(plugin, pool, ids, params, seed, batch_size)`` returns a
    coefficient table and a report (:mod:`evomerge.ops.learned_coefficients`).
    ``mergekit`` is the method's name in mergekit (None: mergekit has none,
    so a recipe using it is exported without a mergekit.yaml); ``reference`` where the
    method comes from (a paper); ``ranges`` the values a parameter accepts (:class:`Range`;
    an undeclared one: any finite number, or a switch); ``joint`` a rule over several
    parameters at once (della's ``density +/- epsilon``): given, per parameter, the interval
    of values a merge may call the method with (a fixed value is ``(v, v)``, a gene its range),
    why some combination in them is refused (a phrase naming the parameters), or None;
    ``statistics_check`` the same for one tensor's statistics (one per model) before a search
    uses them (RegMean's near-singular Gram systems).
    """

    name: str
    fn: Callable
    base: BaseRole
    model_params: Parameters
    params: Parameters
    random: bool
    statistics: str | None
    mergekit: str | None
    reference: str | None
    ranges: Mapping[str, Range]
    joint: Callable[[Mapping[str, tuple[float, float]]], str | None] | None
    statistics_check: Callable[[Sequence, Mapping[str, tuple[float, float]]], str | None] | None
    learner: Callable | None

    def __init__(
        self,
        name: str,
        fn: Callable,
        base: BaseRole | str | bool | None = None,
        model_params: Parameters | Mapping | None = None,
        params: Parameters | Mapping | None = None,
        *,
        random: bool = False,
        statistics: str | None = None,
        mergekit: str | None = None,
        reference: str | None = None,
        ranges: Mapping[str, Range] | None = None,
        joint: Callable[[Mapping[str, tuple[float, float]]], str | None] | None = None,
        statistics_check: Callable | None = None,
        learner: Callable | None = None,
        needs_base: bool | None = None,
        optional_base: bool = False,
    ):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a merge method's name is a non-empty string, got {name!r}")
        if not callable(fn):
            raise TypeError(f"{name}: fn must be callable, got {fn!r}")
        if statistics not in (None, *STATISTICS_KINDS):
            known = ", ".join(f"'{k}'" for k in STATISTICS_KINDS)
            raise ValueError(f"{name}: statistics is {known} or None, not {statistics!r}")
        if (statistics == "coefficients") != (learner is not None):
            raise ValueError(f"{name}: a learner goes with statistics='coefficients', and only")
        values = {
            "name": name,
            "fn": fn,
            "base": _role(base, needs_base, optional_base),
            "model_params": _parameters(model_params, f"{name}: model_params"),
            "params": _parameters(params, f"{name}: params"),
            "random": bool(random),
            "statistics": statistics,
            "mergekit": mergekit,
            "reference": reference,
            "ranges": MappingProxyType(dict(ranges or {})),
            "joint": joint,
            "statistics_check": statistics_check,
            "learner": learner,
        }
        stray = [n for n in values["ranges"] if n not in values["model_params"]]
        stray = [n for n in stray if n not in values["params"]]
        if stray:
            raise ValueError(f"{name}: ranges names '{stray[0]}', which is not a parameter")
        for attr, value in values.items():
            object.__setattr__(self, attr, value)

    def range_of(self, name: str) -> Range:
        """The values parameter ``name`` accepts (undeclared: any finite number or a switch)."""
        return self.ranges.get(name, ANY_FINITE)

    def value_problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not a value of parameter ``name`` (a phrase), or None."""
        if name not in self.model_params and name not in self.params:
            known = ", ".join([*self.model_params.names, *self.params.names]) or "none"
            return f"is not a parameter of {self.name} (it has: {known})"
        declared = self.ranges.get(name)
        if declared is None:  # undeclared: a number (finite) or a switch
            if isinstance(value, bool) or value is None:
                return None
            return ANY_FINITE.problem(value)
        return declared.problem(value)

    def joint_problem(self, intervals: Mapping[str, tuple[float, float]]) -> str | None:
        """Why the parameters, each anywhere in its interval, may not be combined (a phrase), or
        None. Parameters missing from ``intervals`` take their default."""
        if self.joint is None:
            return None
        return self.joint(self._with_defaults(intervals))

    def statistics_problem(
        self, statistics: Sequence, intervals: Mapping[str, tuple[float, float]]
    ) -> str | None:
        """Why one tensor's statistics (one per model) cannot serve the parameters, each
        anywhere in its interval (a phrase), or None."""
        if self.statistics_check is None:
            return None
        return self.statistics_check(statistics, self._with_defaults(intervals))

    def _with_defaults(self, intervals: Mapping[str, tuple[float, float]]) -> dict:
        defaults = {**self.model_params.defaults, **self.params.defaults}
        full = {k: (float(v), float(v)) for k, v in defaults.items() if _is_number(v)}
        full.update({k: (float(lo), float(hi)) for k, (lo, hi) in intervals.items()})
        return full

    @property
    def needs_base(self) -> bool:
        """The earlier flag: the method merges task vectors against a base it requires."""
        return self.base is BaseRole.REQUIRED

    @property
    def optional_base(self) -> bool:
        """The earlier flag: the method uses a base when given one."""
        return self.base is BaseRole.OPTIONAL

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
        if self.base is BaseRole.REQUIRED and base is None:
            raise ValueError(f"{self.name} merges task vectors: a base tensor is required")
        if self.base is BaseRole.ENDPOINT and (base is None or len(models) != 1):
            raise ValueError(f"{self.name} merges two tensors: a base and one model")
        _check_shapes(base, models)
        if model_params is None:
            model_params = [{} for _ in models]
        if len(model_params) != len(models):
            raise ValueError(
                f"{self.name}: {len(model_params)} model_params for {len(models)} models"
            )
        filled = [
            self.model_params.fill(mp, f"{self.name}: model {i}")
            for i, mp in enumerate(model_params)
        ]
        params = self.params.fill(params or {}, self.name)
        if self.statistics is None:
            return self.fn(base, models, filled, params, generator)
        return self.fn(base, models, filled, params, generator, statistics=statistics)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_shapes(base: torch.Tensor | None, models: Sequence[torch.Tensor]) -> None:
    shapes = [tuple(t.shape) for t in ([base] if base is not None else []) + models]
    if len(set(shapes)) > 1:
        raise ValueError(f"tensor shapes differ: {', '.join(str(s) for s in shapes)}")
