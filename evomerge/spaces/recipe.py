"""Recipe space: a small real gene vector that says how to merge K seed models, group by group.

Tensors are grouped by layer index (parsed from their names; ``layers_per_group`` layers share
genes) and by kind (attention / MLP / norm / embedding / head / other, by name filters).
Embeddings and the output head sit outside the layers and get genes of their own. Each group
gets one gene per seed model for every evolving per-model parameter (``weight``, ``density``,
...) and one gene for every evolving global parameter (``t``, ``lambda``, ...). Genes map to
parameters through the bounded transform the config declares, so a search never produces an
out-of-range density or weight.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.core.keys import key
from evomerge.ops.method import SEQUENTIAL_KINDS
from evomerge.ops.operators import BaseRole, get_merge_method
from evomerge.ops.statistics import SearchStatistics
from evomerge.tensors.layer_names import LAYER_PATTERN

DEFAULT_LAYER_PATTERN = LAYER_PATTERN  # one layer naming for recipes, slices and stacks
DEFAULT_KINDS = {
    "embedding": r"embed|wte|wpe|tok_embeddings",
    "head": r"lm_head|classifier|(?:^|\.)output\.",
    "norm": r"norm|ln_|layernorm",
    "attention": r"attn|attention|q_proj|k_proj|v_proj|o_proj",
    "mlp": r"mlp|ffn|feed_forward|gate_proj|up_proj|down_proj|fc\d?",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneRange(_Section):
    """How one gene becomes a parameter value: ``low + (high - low) * s(gene)``.

    ``linear``: s = clamp(gene, 0, 1) (for searches bounded to [0, 1], e.g. CMA-ES with bounds);
    ``sigmoid``: s = sigmoid(gene) (for unbounded searches). ``init`` is the starting value in
    parameter units (default: the middle of the range).
    """

    low: float = 0.0
    high: float = 1.0
    transform: Literal["linear", "sigmoid"] = "linear"
    init: float | None = None

    @model_validator(mode="after")
    def _check(self):
        for what, v in (("low", self.low), ("high", self.high), ("init", self.init)):
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{what} is {v}; give a finite number")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.init is not None and not self.low <= self.init <= self.high:
            raise ValueError(f"init ({self.init}) must lie in [low, high]")
        return self

    def value(self, gene: float) -> float:
        s = min(1.0, max(0.0, gene)) if self.transform == "linear" else _sigmoid(gene)
        return self.low + (self.high - self.low) * s

    def gene(self, value: float) -> float:
        s = (value - self.low) / (self.high - self.low)
        if self.transform == "linear":
            return s
        s = min(1 - 1e-6, max(1e-6, s))
        return math.log(s / (1 - s))

    def initial_gene(self) -> float:
        return self.gene(self.init if self.init is not None else (self.low + self.high) / 2)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class GroupSpec(_Section):
    """How tensors are grouped: by layer index (``layers_per_group`` at a time) and kind."""

    layers_per_group: int = Field(1, ge=1, description="Consecutive layers that share genes.")
    layer_pattern: str = Field(
        DEFAULT_LAYER_PATTERN, description="Regex whose first group is a tensor's layer index."
    )
    kinds: dict[str, str] = Field(
        DEFAULT_KINDS, description="Kind name -> regex on the tensor name; first match wins."
    )

    @model_validator(mode="after")
    def _compile(self):
        for what, pattern in [("layer_pattern", self.layer_pattern), *self.kinds.items()]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{what}: not a valid regular expression ({exc})") from None
        return self


class LearnedStart(_Section):
    """``recipe.start_from:`` the search's first genes learnt by a gradient merge.

    ``method`` is a merge method that learns its coefficients (``adamerging``,
    ``frank_wolfe``), run once over the recipe's own layer groups (one group when its
    ``layer_wise`` is false) on the examples of ``recipe.statistics``; each merged seed's
    learnt coefficient in a group becomes the starting value of its ``weight`` gene there
    (clamped into the gene's range). The other genes start at their ``init``.
    """

    method: str = Field(description="A merge method with learnt coefficients.")
    params: dict[str, float | bool] = Field({}, description="Its parameters (steps, lr, ...).")

    @model_validator(mode="after")
    def _check(self):
        method = get_merge_method(self.method)
        if method.learner is None:
            raise ValueError(
                f"method: {self.method} learns no coefficients; use adamerging or frank_wolfe"
            )
        for name, value in self.params.items():
            problem = method.value_problem(name, value)
            if problem is not None:
                raise ValueError(f"params.{name}: {problem}")
        return self


class RecipeSection(_Section):
    """``recipe:`` — the merge operator, its fixed parameters, and which parameters evolve."""

    method: str = Field(description="Merge operator (linear, task_arithmetic, ties, ...).")
    base: int | None = Field(None, ge=0, description="Index of the seed used as the base.")
    params: dict[str, float | bool] = Field({}, description="Fixed global parameters.")
    model_params: dict[str, float] = Field({}, description="Fixed per-model parameters.")
    genes: dict[str, GeneRange] = Field(
        {"weight": GeneRange()}, description="Evolving parameters and their ranges."
    )
    groups: GroupSpec = GroupSpec()
    seed: int = Field(0, description="Seed of random operators (DARE) when materialising.")
    statistics: SearchStatistics | None = Field(
        None, description="Data-aware methods (fisher, regmean): the examples of each seed."
    )
    start_from: LearnedStart | None = Field(
        None, description="Start the search from weights learnt by adamerging or frank_wolfe."
    )

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Per set parameter, the lowest and highest value a candidate can give it."""
        fixed = {**self.params, **self.model_params}
        out = {k: (float(v), float(v)) for k, v in fixed.items()}
        out.update({k: (g.low, g.high) for k, g in self.genes.items()})
        return out

    @model_validator(mode="after")
    def _check_method(self):
        method = get_merge_method(self.method)  # ValueError lists the known names
        known = [*method.model_params.names, *method.params.names]
        for name in [*self.genes, *self.params, *self.model_params]:
            if name not in known:
                raise ValueError(
                    f"'{name}' is not a parameter of {self.method}; it has: {', '.join(known)}"
                )
        for where, values in (("params", self.params), ("model_params", self.model_params)):
            for name, value in values.items():
                problem = method.value_problem(name, value)
                if problem is not None:
                    raise ValueError(f"{where}.{name}: {problem}")
        for name, gene in self.genes.items():
            allowed = method.range_of(name)
            if allowed.flag or allowed.integer or not allowed.holds(gene.low, gene.high):
                raise ValueError(
                    f"genes.{name}: the range [{gene.low:g}, {gene.high:g}] leaves what "
                    f"{self.method} accepts ({allowed.describe()}); narrow low/high to it"
                )
        problem = method.joint_problem(self.intervals())
        if problem is not None:
            raise ValueError(f"genes/params: {problem}")
        if method.base is BaseRole.REQUIRED and self.base is None:
            raise ValueError(f"{self.method} merges task vectors: set recipe.base (a seed index)")
        if method.base is BaseRole.ENDPOINT and self.base is None:
            raise ValueError(
                f"{self.method} interpolates from a base to one model: set recipe.base (a seed "
                "index) and use two seeds"
            )
        if method.statistics in SEQUENTIAL_KINDS:
            raise ValueError(
                f"{self.method} takes its statistics through the merge itself, once per merge; "
                "use it in 'evomerge merge', or use regmean in a recipe search"
            )
        if method.statistics == "coefficients":
            raise ValueError(
                f"{self.method} learns its coefficients once per merge; use it in 'evomerge "
                f"merge', or start a search from it: recipe.start_from: {{method: {self.method}}}"
            )
        if self.start_from is not None:
            if self.base is None or "weight" not in self.genes:
                raise ValueError(
                    "start_from: a learnt start sets each merged seed's weight genes over task "
                    "vectors; set recipe.base and evolve genes.weight"
                )
            if self.statistics is None:
                raise ValueError(
                    "start_from: the learnt start needs data; set recipe.statistics: "
                    "{examples: [one example group per merged seed]}"
                )
        if method.statistics is not None and self.statistics is None:
            raise ValueError(
                f"statistics: {self.method} needs data; set recipe.statistics: {{examples: "
                "[one example group per merged seed]}} (the plug-in's example_groups())"
            )
        return self


class RecipeSpace:
    """The gene layout of one recipe over named tensors, and its decoding."""

    def __init__(
        self, section: RecipeSection, layout: Sequence[tuple[str, Sequence[int]]], num_seeds: int
    ):
        self.section = section
        self.method = get_merge_method(section.method)
        if section.base is not None and section.base >= num_seeds:
            raise ValueError(f"recipe.base is {section.base} but there are {num_seeds} seeds")
        self.models = [i for i in range(num_seeds) if i != section.base]
        if self.method.base is BaseRole.ENDPOINT and len(self.models) != 1:
            raise ValueError(
                f"{section.method} merges the base with one model, but {len(self.models)} "
                "seeds are not the base; use two seeds (seeds.count: 2)"
            )
        self.layout = [(name, tuple(shape)) for name, shape in layout]
        self.group_of = [self._group(name) for name, _ in self.layout]
        self.groups = list(dict.fromkeys(self.group_of))
        per_model = [g for g in section.genes if g in self.method.model_params]
        per_global = [g for g in section.genes if g in self.method.params]
        self.genes: list[tuple[str, str, int | None]] = []
        for group in self.groups:
            self.genes += [(group, p, m) for p in per_model for m in range(len(self.models))]
            self.genes += [(group, p, None) for p in per_global]
        self.dim = len(self.genes)
        #: per layout tensor, each merged model's statistic (data-aware methods), or None
        self.statistics: list[list[torch.Tensor | None]] | None = None

    def attach_statistics(self, per_model: Sequence[dict[str, torch.Tensor]]) -> None:
        """Give a data-aware method each merged model's statistics, keyed by tensor name."""
        if len(per_model) != len(self.models):
            raise ValueError(f"statistics for {len(per_model)} models, {len(self.models)} merged")
        self.statistics = [[d.get(name) for d in per_model] for name, _ in self.layout]
        intervals = self.section.intervals()
        for (name, _), stats in zip(self.layout, self.statistics, strict=True):
            problem = self.method.statistics_problem(stats, intervals)
            if problem is not None:
                raise ValueError(f"{self.section.method} on {name}: {problem}")

    def _group(self, name: str) -> str:
        spec = self.section.groups
        kind = next((k for k, rx in spec.kinds.items() if re.search(rx, name)), "other")
        found = re.search(spec.layer_pattern, name)
        if not found:
            return kind
        lo = int(found.group(1)) // spec.layers_per_group * spec.layers_per_group
        span = f"{lo}" if spec.layers_per_group == 1 else f"{lo}-{lo + spec.layers_per_group - 1}"
        return f"layers.{span}/{kind}"

    def initial(self) -> list[float]:
        return [self.section.genes[p].initial_gene() for _, p, _ in self.genes]

    def decode(self, genes: Sequence[float]) -> dict[str, dict]:
        """Per group: ``{"models": [per-model params], "params": global params}``."""
        if len(genes) != self.dim:
            raise ValueError(f"expected {self.dim} genes, got {len(genes)}")
        out = {
            g: {
                "models": [dict(self.section.model_params) for _ in self.models],
                "params": dict(self.section.params),
            }
            for g in self.groups
        }
        for value, (group, param, model) in zip(genes, self.genes, strict=True):
            v = self.section.genes[param].value(float(value))
            if model is None:
                out[group]["params"][param] = v
            else:
                out[group]["models"][model][param] = v
        return out

    def merge_tensor(self, index: int, parts: Sequence[torch.Tensor], recipe: dict) -> torch.Tensor:
        """Tensor ``index`` of the layout merged from the K seeds' ``parts`` (its shape).

        ``recipe`` is :meth:`decode`'s answer. Random methods (DARE) draw from a generator
        keyed by the recipe's seed and the tensor's index, so a tensor is the same whether
        it is merged alone, in a flat vector, or straight into a resident model.
        """
        group = self.group_of[index]
        base = None if self.section.base is None else parts[self.section.base]
        models = [parts[m] for m in self.models]
        gen = None
        if self.method.random:
            gen = torch.Generator().manual_seed(key(self.section.seed, index))
        extra = {}
        if self.method.statistics is not None:
            extra["statistics"] = None if self.statistics is None else self.statistics[index]
        mp, gp = recipe[group]["models"], recipe[group]["params"]
        return self.method(base, models, mp, gp, gen, **extra)

    def materialize(self, seeds: torch.Tensor, genes: Sequence[float]) -> torch.Tensor:
        """The merged flat parameter vector of one recipe over ``(K, N)`` flat seeds."""
        recipe = self.decode(genes)
        out = torch.empty(seeds.shape[1], dtype=seeds.dtype, device=seeds.device)
        offset = 0
        for i, (_, shape) in enumerate(self.layout):
            n = math.prod(shape)
            part = seeds[:, offset : offset + n].view(len(seeds), *shape)
            out[offset : offset + n] = self.merge_tensor(i, list(part), recipe).reshape(-1)
            offset += n
        if offset != seeds.shape[1]:
            raise ValueError(
                f"the layout covers {offset} parameters, the seeds have {seeds.shape[1]}"
            )
        return out


def sigmoid_bounds_problem(section: RecipeSection, bounds) -> str | None:
    """Why a bounded search cannot use this recipe's ``sigmoid`` genes, or None.

    A sigmoid gene maps all reals onto [low, high]; bounded to [0, 1] it reaches only
    sigmoid(0)..sigmoid(1), the 50-73 % slice of its range, and starts on the lower bound. A
    bounded search wants ``linear`` genes (whose [0, 1] is the whole range); sigmoid genes want
    an unbounded one.
    """
    if bounds is None:
        return None
    sigmoid = [name for name, g in section.genes.items() if g.transform == "sigmoid"]
    if not sigmoid:
        return None
    low, high = bounds
    reach = (_sigmoid(low), _sigmoid(high))
    return (
        f"recipe.genes.{sigmoid[0]}: transform 'sigmoid' with strategy.bounds [{low}, {high}] "
        f"reaches only {100 * reach[0]:.0f}-{100 * reach[1]:.0f} % of the gene's range; use "
        "transform: linear with bounds, or set strategy.bounds: null (cmaes) for sigmoid genes"
    )
