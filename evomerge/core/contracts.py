"""What a worker may call on a fitness plug-in, and what an evaluator offers the search loop.

Typed protocols instead of optional methods found by ``hasattr``: a reader sees here the whole
surface a worker (:class:`~evomerge.runtime.host.FitnessHost`) and the search loop rely on.
The lowest layer: this module imports nothing from evomerge.

* :class:`FlatFitness` — every plug-in: candidates as ``(B, num_params)`` float32 rows.
* :class:`ResidentModel` — a plug-in that also holds one model whose tensors a worker writes
  candidates into, tensor by tensor, in the model's dtype on its device (lineage and recipe
  candidates alike); it is scored as loaded. :func:`resident_model` says whether a plug-in is
  one (the base class :class:`evomerge.Fitness` declares the methods with "no model"
  defaults, so the answer comes from ``resident_tensors()``, not from the methods' presence).
* :class:`ExampleStatistics` — a plug-in whose training examples drive the data-aware merges
  (Fisher, RegMean): differentiable per-example log-likelihoods and the inputs of its linear
  layers, for any flat parameter vector.
* :class:`OutputDistributions` — a plug-in that also gives the model's whole output
  distribution on its examples (log-probabilities over its classes or vocabulary), labels
  unused: AdaMerging minimises its entropy.
* :class:`Evaluator` — what turns candidates into scores (local or Ray); the search loop calls
  nothing else. :class:`WorkerPool` adds the per-worker figures a pool of processes reports.
  :class:`DeferredChildren` — children handed to an evaluator as recipes, built where scored.
* :class:`Space` — one kind of candidate (dense vectors, lineages, merge recipes, layer
  stacks): how it varies, how the search's first candidates are made, how it is stored in a
  checkpoint and described in ``recipe.yaml``; its :class:`SpaceWorker` (built where the
  seeds and the plug-in live) realises a candidate as :class:`Realised` flat rows or in the
  plug-in's resident model, and exports one as a model folder (or in another form it
  declares: :func:`export_forms`). The run's start, the workers
  and ``evomerge export`` each have one path through these calls, whatever the kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

Layout = list[tuple[str, tuple[int, ...]]]


@runtime_checkable
class FlatFitness(Protocol):
    """The contract of every fitness plug-in (see :class:`evomerge.Fitness` for each call)."""

    num_params: int
    num_examples: int
    score_name: str
    nonnegative: bool

    def setup(self, device: torch.device) -> None: ...

    def score(
        self, params: torch.Tensor, example_ids: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def metrics(self, params: torch.Tensor) -> dict[str, float]: ...

    def make_seeds(self, count: int, seed: int, **options) -> torch.Tensor: ...

    def example_groups(self) -> dict[str, list[int]]: ...

    def param_layout(self) -> Layout: ...

    def export_info(self) -> dict: ...


@runtime_checkable
class ResidentModel(Protocol):
    """A plug-in with one resident model that candidates are written into in place.

    ``resident_tensors()`` are the model's parameters in ``param_layout()`` order (any dtype,
    any device); after a worker has written a candidate into them it calls ``score_loaded``
    and ``metrics_loaded``. ``seed_folders()`` names safetensors folders holding the seeds
    (memory-mapped by the worker), or None when the seeds come from ``make_seeds``.
    """

    def seed_folders(self) -> list[str] | None: ...

    def resident_tensors(self) -> Sequence[torch.Tensor] | None: ...

    def score_loaded(self, example_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def metrics_loaded(self) -> dict[str, float]: ...

    def param_layout(self) -> Layout: ...


def resident_tensors(plugin: Any) -> list[torch.Tensor] | None:
    """The plug-in's resident tensors when it is a :class:`ResidentModel` with a model."""
    if not isinstance(plugin, ResidentModel):
        return None
    tensors = plugin.resident_tensors()
    return None if tensors is None else list(tensors)


@runtime_checkable
class StreamedModel(Protocol):
    """A plug-in whose resident model takes candidates as a stream of named tensors.

    For a model whose parameters are not plain tensors in ``param_layout()`` order (an
    inference engine's fused, repacked weights), ``resident_tensors()`` is None and
    ``load_tensors(pairs)`` writes one candidate from ``(name, tensor)`` pairs in layout order,
    each tensor only needed until the next is asked for; then ``score_loaded`` and
    ``metrics_loaded`` score it, as for a :class:`ResidentModel`.
    """

    def load_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def score_loaded(self, example_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def metrics_loaded(self) -> dict[str, float]: ...

    def param_layout(self) -> Layout: ...


def tensor_stream(plugin: Any):
    """The plug-in's ``load_tensors`` when it streams candidates and has no resident tensors
    to write into; else None."""
    if not isinstance(plugin, StreamedModel) or resident_tensors(plugin) is not None:
        return None
    return plugin.load_tensors


@runtime_checkable
class ExampleStatistics(Protocol):
    """A plug-in that tells the data-aware merges what its examples say about a model.

    ``log_likelihoods(params, example_ids)``: ``log p(y | x)`` of each listed training example
    (its label, or its target tokens) under the model whose flat parameters (in
    ``param_layout()`` order) are ``params``, differentiable with respect to ``params``: the
    Fisher pass squares its gradients. ``linear_inputs(params, example_ids)``: for each linear
    layer's weight (by its ``param_layout()`` name, stored ``(out, in)`` or ``(in, out)``), the
    rows of inputs ``(rows, in)`` the layer saw on those examples (padding excluded): the RegMean
    pass sums their Gram matrices. ``example_groups()`` names the examples a model's statistics
    are taken over.
    """

    def log_likelihoods(self, params: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor: ...

    def linear_inputs(
        self, params: torch.Tensor, example_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...

    def example_groups(self) -> dict[str, list[int]]: ...

    def param_layout(self) -> Layout: ...


@runtime_checkable
class OutputDistributions(Protocol):
    """A plug-in that gives the model's output distribution on its examples, labels unused.

    ``log_probabilities(params, example_ids)``: a ``(rows, classes)`` tensor, each row the
    log-softmax of one prediction the model makes on the listed training examples (one row per
    image for a classifier; one per answer token for a language model), differentiable with
    respect to the flat ``params`` (``param_layout()`` order). AdaMerging minimises the mean
    entropy ``-sum_c p_c log p_c`` of these rows; it never reads the examples' labels.
    """

    def log_probabilities(
        self, params: torch.Tensor, example_ids: torch.Tensor
    ) -> torch.Tensor: ...

    def example_groups(self) -> dict[str, list[int]]: ...

    def param_layout(self) -> Layout: ...


@runtime_checkable
class Evaluator(Protocol):
    """Scores candidates for the search loop (``local`` in-process, ``ray`` actor pool).

    ``info`` is the plug-in's description (``num_params``, ``num_examples``, ``score_name``,
    ``nonnegative``, ``groups``; for recipes ``initial``, ``layout``, ``num_seeds``).
    """

    kind: str
    info: dict
    workers: int

    def score(self, params: Any, example_ids: Any = None) -> torch.Tensor:
        """``(B, E)`` scores; with ``example_ids`` (an evaluation schedule scoring in stages)
        ``(B, len(example_ids))`` on those training examples only."""
        ...

    def metrics(self, params: Any) -> dict[str, float]: ...

    def lineage_seeds(self) -> Any: ...

    def make_seeds(self, count: int, seed: int, options: dict) -> torch.Tensor: ...

    def seed_genes(self) -> list[float]:
        """The first candidate as one worker's space computes it (a recipe's learnt start);
        asked once, when a run starts."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


@runtime_checkable
class WorkerPool(Evaluator, Protocol):
    """An evaluator of several worker processes, which reports what each one did."""

    def workers_report(self) -> list[dict]: ...

    def utilisation(self) -> float | None: ...

    def seeds_shared(self) -> list[bool]: ...

    def nodes(self) -> list[str]: ...


@runtime_checkable
class DeferredChildren(Protocol):
    """A batch of children still as recipes over the members they are made from: split
    without being built, built where they are scored (a Ray worker, from its replica of the
    members) or here (:meth:`materialise`). An evaluator sends one as it is; anything else it
    is handed is a batch of genomes."""

    def __len__(self) -> int: ...

    def subset(self, rows: Iterable[int]) -> DeferredChildren:
        """The children at positions ``rows``, as recipes still."""
        ...

    def materialise(self) -> torch.Tensor:
        """All the children's rows, built here."""
        ...

    def parents(self) -> set[int]:
        """Ids of the members these children are made from."""
        ...

    def payload(self, held: set[int]) -> dict:
        """What a worker holding members ``held`` needs to build them."""
        ...


@runtime_checkable
class Realised(Protocol):
    """Candidates made concrete on a worker, ready for the plug-in to score.

    Either flat parameter rows (the plug-in's ``score`` / ``metrics``) or a candidate already
    written into the plug-in's resident model (``score_loaded`` / ``metrics_loaded``): each
    kind of realisation knows which calls score it, so the worker never asks which it has.
    ``scorer`` is the worker's checked access to the plug-in
    (:class:`~evomerge.runtime.host.FitnessHost`).
    """

    count: int

    def score(self, scorer: Any, example_ids: torch.Tensor | None) -> Any: ...

    def metrics(self, scorer: Any) -> Any: ...


@runtime_checkable
class SpaceWorker(Protocol):
    """A space on a worker that holds the seeds and the plug-in: realises and exports."""

    def batches(self, genomes: Any) -> Sequence[Any]:
        """The genomes in the groups realised at once (one each, or the whole batch)."""
        ...

    def realise(self, batch: Any) -> Realised: ...

    def export(self, genome: Any, out: Any, dtype: str, doc: dict) -> dict:
        """Write ``genome`` in the space's own form (a model folder; an adapter folder for the
        adapter space) at ``out`` with ``recipe.yaml`` (``doc`` plus :meth:`Space.describe`);
        returns what was written (``tensors``, ``space``, ...). A worker that writes other
        forms too names them in ``export_forms`` and takes ``form=NAME`` here (see
        :func:`export_forms`)."""
        ...


def export_forms(worker: Any) -> tuple[str, ...]:
    """The forms a space worker exports besides its own (``evomerge export --merged`` asks
    for ``merged``): its ``export_forms``, none when it declares none."""
    return tuple(getattr(worker, "export_forms", ()))


@runtime_checkable
class Space(Protocol):
    """One kind of candidate: variation, seeding, storage and description on the driver.

    Variation (used by the archive strategies): ``size``, ``copy``, ``split_slerp``,
    ``slerp``, ``mutate``, ``mutation_shape``, ``add_step``, ``pack``. Storage (checkpoints,
    no pickle): ``to_tensors`` / ``from_tensors``. ``seed_genomes`` gives the search's first
    candidates; ``describe`` a member's account for ``recipe.yaml``; ``worker`` the
    realisation where seeds and plug-in live.
    """

    name: str

    def seed_genomes(self, start: Any) -> Any: ...

    def size(self, genome: Any) -> int: ...

    def copy(self, genome: Any) -> Any: ...

    def split_slerp(self, a: Any, b: Any, split: int, w: float) -> Any: ...

    def slerp(self, a: Any, b: Any, t: float) -> Any: ...

    def mutate(self, child: Any, std: float, gen: torch.Generator) -> Any: ...

    def mutation_shape(self, genome: Any) -> tuple[int, int]: ...

    def add_step(self, genome: Any, step: torch.Tensor) -> Any: ...

    def pack(self, rows: list) -> Any: ...

    def to_tensors(self, members: Sequence) -> dict[str, torch.Tensor]: ...

    def from_tensors(self, tensors: dict[str, torch.Tensor], ids: Sequence[int]) -> tuple: ...

    def describe(self, genome: Any) -> dict: ...
