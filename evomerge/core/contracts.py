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
* :class:`Evaluator` — what turns candidates into scores (local or Ray); the search loop calls
  nothing else. :class:`WorkerPool` adds the per-worker figures a pool of processes reports.
"""

from __future__ import annotations

from collections.abc import Sequence
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
class Evaluator(Protocol):
    """Scores candidates for the search loop (``local`` in-process, ``ray`` actor pool).

    ``info`` is the plug-in's description (``num_params``, ``num_examples``, ``score_name``,
    ``nonnegative``, ``groups``; for recipes ``initial``, ``layout``, ``num_seeds``).
    """

    kind: str
    info: dict
    workers: int

    def score(self, params: Any) -> torch.Tensor: ...

    def metrics(self, params: Any) -> dict[str, float]: ...

    def lineage_seeds(self) -> Any: ...

    def make_seeds(self, count: int, seed: int, options: dict) -> torch.Tensor: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


@runtime_checkable
class WorkerPool(Evaluator, Protocol):
    """An evaluator of several worker processes, which reports what each one did."""

    def workers_report(self) -> list[dict]: ...

    def utilisation(self) -> float | None: ...

    def seeds_shared(self) -> list[bool]: ...

    def nodes(self) -> list[str]: ...
