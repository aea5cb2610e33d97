"""The engine contract of the causal-LM fitnesses: what runs the resident model.

A causal-LM plug-in (:class:`~evomerge.kit.CausalLMBase`) scores examples through two
primitives, teacher-forced targets and greedy generations; an *engine* provides them over one
resident model per worker, into which candidates are written in place. Engines are named in
``fitness.options.engine`` and found in :data:`ENGINES` (lazy entries: ``import evomerge``
never imports an engine's library):

* ``transformers`` (default): a Hugging Face model built from the first seed's config, its
  parameters the resident tensors (:mod:`evomerge.kit.hf_engine`).
* ``vllm``: one vLLM engine, candidates streamed tensor by tensor into its weights through
  vLLM's in-place weight reload (:mod:`evomerge.kit.vllm_engine`).

A new engine is a subclass of :class:`LMEngine` registered under a new name; the plug-ins and
their metrics do not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from evomerge.core.registry import Registry


@dataclass
class Targets:
    """Teacher-forced facts about one example's answer under the loaded model.

    ``logp``: ``log p(answer token | prompt, previous answer tokens)``, float32, one per answer
    token; ``best``: whether each answer token is the most likely next token. With end ids
    asked for, ``end_logp`` is ``log sum_e p(e | prompt + answer)`` over the end ids and
    ``end_best`` whether the most likely next token after the answer is one of them.
    """

    logp: torch.Tensor
    best: torch.Tensor
    end_logp: float | None = None
    end_best: bool | None = None


class LMEngine(ABC):
    """One resident causal LM in a worker, and the two scoring primitives over it.

    ``fit`` is the plug-in (a :class:`~evomerge.kit.CausalLMBase`: its seeds, dtype, tokenizer
    ids, ``batch_size``); ``engine_args`` are ``fitness.options.engine_args``, passed through
    to the engine's library.
    """

    #: Whether the engine batches many requests itself (then a plug-in hands it every example
    #: at once instead of ``batch_size`` at a time).
    batches_itself: bool = False

    def __init__(self, fit, engine_args: dict | None = None):
        self.fit = fit
        self.engine_args = dict(engine_args or {})

    @abstractmethod
    def start(self, device: torch.device) -> list[tuple[str, tuple[int, ...]]]:
        """Build the resident model on ``device``; return its parameters' layout (Hugging Face
        names and shapes, tied weights once): the candidates' flat order."""

    @abstractmethod
    def resident_tensors(self) -> list[torch.Tensor] | None:
        """The model's parameters in layout order when candidates can be written into them
        with ``copy_``; None when they can only be streamed through :meth:`load`."""

    @abstractmethod
    def load(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Write one candidate into the resident model, tensor by tensor: every layout name
        once, each tensor only needed until the next one is asked for."""

    @abstractmethod
    def targets(self, batch: list, ends: list[int] | None) -> list[Targets]:
        """:class:`Targets` of each :class:`~evomerge.kit.Example` (``prefix + answer``);
        ``ends`` (end-of-sequence ids) adds the end target after the answer."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop=()) -> list[list[int]]:
        """Greedy continuations of token-id ``prompts`` (up to ``max_new_tokens``, stopping at
        the plug-in's end ids; ``stop`` strings may end one early, never change its text
        before the stop)."""


#: Engine name -> :class:`LMEngine` subclass (``fitness.options.engine``).
ENGINES: Registry[type[LMEngine]] = Registry("engine", "fitness.options.engine")
ENGINES.register("transformers", "evomerge.kit.hf_engine:TransformersEngine")
ENGINES.register("vllm", "evomerge.kit.vllm_engine:VLLMEngine")
