"""The run configuration: YAML validated by pydantic, with one-line errors that name the field.

Every config has a top-level ``seed`` and a budget (``budget.evaluations`` and/or
``budget.example_evaluations``); the ``strategy`` section is
validated by the model its ``name`` registers (see :mod:`evomerge.search.registry`).
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.core import extensions, safe_yaml
from evomerge.core.errors import ConfigError, EvomergeError
from evomerge.core.plugins import resolve_spec
from evomerge.core.validation import format_validation
from evomerge.run.benchmark_guard import searched_test_split
from evomerge.search.registry import STRATEGIES
from evomerge.search.schedules import EvaluationSection
from evomerge.spaces import SPACES
from evomerge.spaces.recipe import RecipeSection, sigmoid_bounds_problem
from evomerge.tensors.model_ref import pin_model


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Section):
    evaluations: int | None = Field(
        None, gt=0, description="Children to evaluate (one forward pass each)."
    )
    example_evaluations: int | None = Field(
        None,
        gt=0,
        description="Training examples to score (one example scored once for one child; seeds "
        "not counted): the true cost, which racing lowers. The run stops at the first budget "
        "reached (this one after the batch that crosses it).",
    )

    @model_validator(mode="after")
    def one_budget(self):
        if self.evaluations is None and self.example_evaluations is None:
            raise ValueError("give evaluations, example_evaluations or both")
        return self


class FitnessSection(_Section):
    plugin: str = Field(
        description="'path/to/file.py:Class', 'package.module:Class' or a bundled plug-in's "
        "name ('digits', 'causal_lm'; see evomerge/bundled.py)."
    )
    options: dict[str, Any] = Field({}, description="Keyword arguments for the plug-in class.")


class GaussianSeeds(_Section):
    kind: Literal["gaussian"] = "gaussian"
    count: int = Field(2, ge=1, description="Number of seed models.")
    std: float = Field(0.01, gt=0, description="Each seed parameter ~ N(0, std^2).")


class PluginSeeds(_Section):
    kind: Literal["plugin"]
    count: int = Field(2, ge=1, description="Number of seed models.")
    options: dict[str, Any] = Field({}, description="Keyword arguments for make_seeds().")


class LocalEvaluatorSection(_Section):
    kind: Literal["local"] = "local"
    device: str = Field("cpu", description="torch device for scoring: cpu, cuda, cuda:1, ...")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads for scoring on the CPU; none: torch's default (one per "
        "core). On a machine shared with other busy processes, 1 avoids the stalls of torch's "
        "threads waiting for each other on small operations.",
    )
    seeds_on_device: Literal["auto", True, False] = Field(
        "auto",
        description="Keep the K seed models on the worker's GPU so a candidate's load is a "
        "device-side mix (auto: when they fit in its free memory). No effect on the CPU, "
        "where the seeds are memory-mapped.",
    )


class RayEvaluatorSection(_Section):
    kind: Literal["ray"]
    workers: int = Field(2, ge=1, description="Ray actors, each with its own fitness instance.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker (fractions allowed).")
    seeds_on_device: Literal["auto", True, False] = Field(
        "auto",
        description="Keep the K seed models on the worker's GPU so a candidate's load is a "
        "device-side mix (auto: when they fit in its free memory). No effect on the CPU, "
        "where the seeds are memory-mapped.",
    )
    address: str | None = Field(
        None, description="Existing cluster ('auto' or HOST:PORT); none: start Ray here."
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="Candidates sent to a worker at a time; none: the batch split evenly over "
        "the workers. 1 keeps every worker busy when evaluation times vary (large models).",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Restarts of a worker whose process or node dies; its unfinished "
        "candidates are retried, so the result is unchanged (0: a death stops the run).",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Seconds a worker may take per candidate; a worker past it is taken to "
        "hang, killed and restarted, and its candidates retried (counts against "
        "max_restarts). None: wait for ever.",
    )


class TrackingSection(_Section):
    """Send every history record to experiment trackers too (both off by default)."""

    tensorboard: bool | str = Field(
        False,
        description="TensorBoard scalars: true writes RUN_DIR/tensorboard, a path writes there "
        "(needs pip install 'evomerge[tensorboard]').",
    )
    mlflow: bool = Field(False, description="Log to MLflow (needs pip install 'evomerge[mlflow]').")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; none: MLflow's default (MLFLOW_TRACKING_URI)."
    )
    mlflow_experiment: str | None = Field(
        None, description="MLflow experiment; none: the run's name."
    )


class RunConfig(_Section):
    """A whole search: what to evolve, how, where to score it, and for how long."""

    seed: int = Field(description="Seed of every random draw of the run.")
    name: str | None = Field(None, description="Run name (default: the config file's stem).")
    extensions: list[str] | None = Field(
        None,
        description="Your modules that register strategies, spaces or merge methods: .py files "
        "(relative to the config's folder or the working directory) or module names, imported "
        "before the config is checked and on every worker.",
    )
    space: str | None = Field(
        None,
        description="The kind of candidate (a registered space: dense, lineage, recipe, "
        "dataflow, or one of your extensions); none: from the recipe section, strategy.space, "
        "or the plug-in's own.",
    )
    budget: Budget
    batch: int = Field(1, ge=1, description="Children asked from one archive state.")
    checkpoint_every: int = Field(5000, ge=1, description="Evaluations between checkpoints.")
    history_every: int = Field(1000, ge=1, description="Evaluations between history records.")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept (older ones are pruned).")
    fitness: FitnessSection
    seeds: Annotated[GaussianSeeds | PluginSeeds, Field(discriminator="kind")] = GaussianSeeds()
    strategy: Any = Field(description="Search strategy; 'name' picks it (m2n2, ga, cmaes, random).")
    recipe: RecipeSection | None = Field(
        None, description="Search merge recipes over the seeds instead of raw parameters."
    )
    evaluator: Annotated[
        LocalEvaluatorSection | RayEvaluatorSection, Field(discriminator="kind")
    ] = LocalEvaluatorSection()
    evaluation: EvaluationSection | None = Field(
        None,
        description="How candidates are scored (schedule: full, race or subset); none: every "
        "candidate on every training example.",
    )
    tracking: TrackingSection | None = Field(
        None, description="Experiment tracking (TensorBoard, MLflow); none: off."
    )
    allow_test_split: bool | None = Field(
        None,
        description="Search on a task that is a well-known benchmark's test split (an lm-eval "
        "benchmark task, a *test* file of gsm8k, mmlu, arc, ...); none: such a task is refused.",
    )

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json", exclude_none=True)
        data["strategy"] = self.strategy.model_dump(mode="json")
        return data


def _validate_strategy(source: str, raw: Any):
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(
            f"{source}: strategy: must be a mapping with a 'name' ({', '.join(STRATEGIES)})"
        )
    if raw["name"] not in STRATEGIES:
        raise ConfigError(f"{source}: strategy.name: {STRATEGIES.unknown(raw['name'])}")
    entry = STRATEGIES.get(raw["name"])
    try:
        return entry.config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc, entry.config, ("strategy",))) from None


def apply_overrides(raw: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source} '{item}': expected KEY=VALUE, e.g. budget.evaluations=500")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source} '{item}': '{part}' is not a section")
            node = child
        try:
            node[parts[-1]] = safe_yaml.loads(value) if value else None
        except safe_yaml.YamlError as exc:
            raise ConfigError(
                f"{source} '{item}': the value is not YAML ({exc}); quote it to pass it as text"
            ) from None
        if len(parts) == 2 and parts[1] == "kind":
            _switch_kind(node, parts[0], source, item)
    return raw


def _switch_kind(section: dict, name: str, source: str, item: str) -> None:
    """``--set evaluator.kind=local`` on a Ray config: the keys of the section that the new
    kind does not have (``workers``, ``num_cpus``, ...) are dropped, and said so, so switching
    a kind from the command line just works. Keys set by a later ``--set`` are still checked."""
    field = RunConfig.model_fields.get(name)
    kinds = {}
    for model in typing.get_args(field.annotation) if field else ():
        kind = getattr(model, "model_fields", {}).get("kind")
        tag = typing.get_args(kind.annotation) if kind is not None else ()
        if tag:
            kinds[tag[0]] = model
    model = kinds.get(section.get("kind"))
    if model is None:
        return  # not a tagged section, or an unknown kind: validation names it
    dropped = [k for k in section if k not in model.model_fields]
    for key in dropped:
        del section[key]
    if dropped:
        print(
            f"[evomerge] {source} '{item}': dropped {', '.join(f'{name}.{k}' for k in dropped)} "
            f"(the {section['kind']} kind has no such keys)",
            file=sys.stderr,
            flush=True,
        )


def _check_space(source: str, cfg: RunConfig, strategy) -> None:
    """``space:`` names a registered space and agrees with the recipe and strategy.space."""
    if cfg.space is None:
        return
    if cfg.space not in SPACES:
        raise ConfigError(f"{source}: space: {SPACES.unknown(cfg.space)}")
    implied = "recipe" if cfg.recipe is not None else getattr(strategy, "space", "dense")
    if implied != "dense" and implied != cfg.space:
        where = "a recipe section" if cfg.recipe is not None else f"strategy.space: {implied}"
        raise ConfigError(
            f"{source}: space: '{cfg.space}' but {where} makes it '{implied}'; give one of them"
        )


def _pinned(fitness, source: str) -> dict:
    """The plug-in's options with every Hub id among its ``seeds`` pinned to the commit it
    resolves to in the local cache (``org/name@<commit>``): the run's config.yaml records it,
    so a resume and every Ray worker read the very same weights."""
    options = dict(fitness.options)
    seeds = list(options.get("seeds") or []) if isinstance(options.get("seeds"), list) else None
    if isinstance(seeds, list) and all(isinstance(s, str) for s in seeds):
        for i, text in enumerate(seeds):
            try:
                seeds[i] = pin_model(text)
            except EvomergeError as exc:
                raise ConfigError(f"{source}: fitness.options.seeds[{i}]: {exc}") from None
        options["seeds"] = seeds
    return options


def validate(raw: Any, source: str, bases: list[Path] = ()) -> RunConfig:
    """Validate a raw mapping; relative plug-in paths are looked up in ``bases``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping of keys to values")
    raw = dict(raw)
    if raw.get("extensions") is not None:  # first: names below may be defined only there
        raw["extensions"] = extensions.import_for_config(raw["extensions"], bases, source)
    strategy_raw = raw.get("strategy")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc, RunConfig)) from None
    strategy = _validate_strategy(source, strategy_raw)
    _check_space(source, cfg, strategy)
    key = "space" if cfg.space is not None else "strategy.space"
    if (cfg.space or getattr(strategy, "space", "dense")) == "lineage":
        if cfg.seeds.kind != "plugin" or cfg.recipe is not None:
            raise ConfigError(
                f"{source}: {key}: lineage genomes mix pre-trained seeds; set "
                "seeds.kind: plugin (and no recipe section)"
            )
        if strategy.mutation_std > 0:
            raise ConfigError(
                f"{source}: strategy.mutation_std: lineage genomes are exact mixes of the seeds "
                "and cannot be mutated; set it to 0 or use space: dense"
            )
    if cfg.recipe is not None and (
        problem := sigmoid_bounds_problem(cfg.recipe, getattr(strategy, "bounds", None))
    ):
        raise ConfigError(f"{source}: {problem}")
    if cfg.recipe is not None and cfg.seeds.kind != "plugin":
        raise ConfigError(
            f"{source}: seeds.kind: a recipe merges seed models the plug-in makes; "
            "set seeds.kind: plugin"
        )
    if (
        cfg.recipe is not None
        and cfg.recipe.base is not None
        and cfg.recipe.base >= cfg.seeds.count
    ):
        raise ConfigError(
            f"{source}: recipe.base: seed {cfg.recipe.base} does not exist "
            f"(seeds.count is {cfg.seeds.count}; indices start at 0)"
        )
    if cfg.seeds.count > getattr(strategy, "archive_size", cfg.seeds.count):
        raise ConfigError(
            f"{source}: seeds.count: {cfg.seeds.count} seeds do not fit an archive of "
            f"{strategy.archive_size}; raise strategy.archive_size or lower seeds.count"
        )
    try:
        plugin = resolve_spec(cfg.fitness.plugin, list(bases))
    except Exception as exc:
        raise ConfigError(f"{source}: {exc}") from None
    options = _pinned(cfg.fitness, source)
    fitness = cfg.fitness.model_copy(update={"plugin": plugin, "options": options})
    return cfg.model_copy(update={"strategy": strategy, "fitness": fitness})


def read_yaml(path: Path) -> Any:
    """A config file through :mod:`evomerge.core.safe_yaml`; any error in one line."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return safe_yaml.load_file(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except safe_yaml.YamlError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_config(path: str | Path, overrides: list[str] = (), address: str | None = None):
    """Read, override and validate a new run's config file (or a bundled one by name, see
    :mod:`evomerge.core.bundled`); ``address`` makes the evaluator join a cluster. A task
    that is a benchmark's test split is refused here (:mod:`evomerge.run.benchmark_guard`):
    a run that started was allowed, so a resume does not ask again."""
    from evomerge.core.bundled import config_path

    path = config_path(path)
    raw = read_yaml(path)
    if isinstance(raw, dict):
        raw = join_cluster(apply_overrides(raw, list(overrides)), address)
    cfg = validate(raw, str(path), bases=[Path.cwd(), path.resolve().parent])
    import yaml

    size = len(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    if size > MAX_CONFIG_BYTES:  # aliases repeating a large value: each copy is written out
        raise ConfigError(
            f"{path}: the resolved config is {size / 2**20:.1f} MiB when written to the run's "
            f"config.yaml (more than {MAX_CONFIG_BYTES // 2**20} MiB; YAML aliases repeat their "
            "value each time); keep large data in a file the plug-in reads, and name the file"
        )
    problem = searched_test_split(cfg.fitness.options)
    if problem and not cfg.allow_test_split:
        raise ConfigError(
            f"{path}: {problem}; a search tuned on a benchmark's test set makes its score "
            "meaningless: search on a train split, or set allow_test_split: true if intended"
        )
    return cfg


#: the largest resolved config a run writes as its config.yaml
MAX_CONFIG_BYTES = 1 << 20


def join_cluster(raw: Any, address: str | None) -> Any:
    """``raw`` with its evaluator on the Ray cluster at ``address`` (None: unchanged)."""
    if not address or not isinstance(raw, dict):
        return raw
    section = raw.get("evaluator") if isinstance(raw.get("evaluator"), dict) else {}
    if section.get("kind") != "ray":
        section = {"kind": "ray"}
    return {**raw, "evaluator": {**section, "address": address}}
