"""The fitness plug-in contract: score candidate models on examples, one score per example.

A plug-in is a class named in the config (``fitness/digits.py:Digits``). Each worker makes one
instance with the config's ``fitness.options`` as keyword arguments and calls :meth:`setup`
once; after that it only receives candidates. Per-example scores (higher is better) are what
niche-preserving archives compete over, so :meth:`score` returns a matrix, not a mean.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Fitness(ABC):
    """Base class for fitness plug-ins.

    Subclasses set :attr:`num_params` and :attr:`num_examples` in :meth:`setup` and implement
    :meth:`score`. :meth:`metrics` (held-out figures for reports) and :meth:`make_seeds` (seed
    models the plug-in knows how to make, e.g. pre-trained experts) are optional.
    """

    #: Length of a candidate's flat parameter vector.
    num_params: int = 0
    #: Number of training examples; example ids run from 0 to ``num_examples - 1``.
    num_examples: int = 0
    #: Name of the per-example score, used for the train metric (``train_<score_name>``).
    score_name: str = "score"
    #: True when every score is >= 0 (required by resource competition).
    nonnegative: bool = True
    #: ``(low, high)`` that every per-example score lies in, or None when scores are unbounded
    #: (log-likelihoods). Racing (``evaluation.schedule: race``) bounds a candidate's unscored
    #: examples by it, and refuses a plug-in without one.
    score_range: tuple[float, float] | None = (0.0, 1.0)
    #: The space this plug-in's candidates belong to when the config names none (a ``recipe:``
    #: section or ``strategy.space`` does): None for the plug-in's flat parameters (``dense``);
    #: a plug-in that scores another kind of candidate names its space (``"dataflow"``).
    space: str | None = None

    def __init__(self, **options):
        if options:
            raise TypeError(f"unexpected fitness options: {', '.join(sorted(options))}")

    @abstractmethod
    def setup(self, device: torch.device) -> None:
        """Load data and the model skeleton onto ``device``. Called once per worker."""

    @abstractmethod
    def score(self, params: torch.Tensor, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Score a batch of candidates.

        ``params`` is ``(B, num_params)`` float32 on the worker's device; ``example_ids`` is a
        1-D int64 tensor of training example ids, or None for all of them. Returns a
        ``(B, len(example_ids))`` float tensor, one score per candidate and example.
        """

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        """Held-out metrics of one candidate (``(num_params,)``), e.g. ``test_accuracy``."""
        return {}

    def make_seeds(self, count: int, seed: int, **options) -> torch.Tensor:
        """Return ``(count, num_params)`` seed models made by the plug-in itself."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot make seeds; use seeds.kind: gaussian"
        )

    def example_groups(self) -> dict[str, list[int]]:
        """Named groups of training example ids (classes, tasks) for niches built on groups.

        MAP-Elites descriptors and Pareto objectives are a member's mean score over a group.
        The default is each task of :meth:`task_ranges` when the plug-in has one, else none.
        """
        ranges = getattr(self, "task_ranges", None)
        if ranges is None:
            return {}
        return {name: list(range(start, stop)) for name, start, stop in ranges()}

    # --- optional: a resident model that lineage genomes are written into ----------------

    def seed_folders(self) -> list[str] | None:
        """Model folders (safetensors) holding the seeds, named as :meth:`param_layout`.

        When given, lineage runs memory-map these files instead of calling
        :meth:`make_seeds`: every worker on a node shares one page-cache copy, in the files'
        own dtype. ``None`` (the default) means the seeds come from :meth:`make_seeds`.
        """
        return None

    def resident_tensors(self) -> list[torch.Tensor] | None:
        """The resident model's parameters, in :meth:`param_layout` order, or ``None``.

        When given, lineage candidates are written straight into these tensors (their dtype,
        their device, one block at a time) and scored with :meth:`score_loaded` and
        :meth:`metrics_loaded`, so a worker never builds a flat float32 copy of the model.
        """
        return None

    def score_loaded(self, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example scores ``(len(example_ids),)`` of the model now in the resident tensors."""
        raise NotImplementedError(f"{type(self).__name__} has no resident model")

    def metrics_loaded(self) -> dict[str, float]:
        """Held-out metrics of the model now in the resident tensors."""
        return {}

    def export_info(self) -> dict:
        """What ``evomerge export`` needs beyond the tensors (all keys optional).

        ``files``: paths copied into the exported folder (``config.json``, tokenizer files);
        ``dtype``: the default export dtype (``float32``, ``bfloat16`` or ``float16``);
        ``seeds``: the seed model folders, in seed order (enables ``mergekit.yaml``).
        """
        return {}

    def param_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Named tensors of the flat parameter vector, in order (for per-layer merge recipes).

        The default is one tensor holding everything; override it to give recipes layers.
        """
        return [("params", (self.num_params,))]
