"""What fitness plug-ins build on, in one public module: ``from evomerge.kit import ...``.

* Causal language models: :class:`CausalLMBase`, a resident Hugging Face model with public,
  documented hooks (``setup_tasks``, ``score_loaded``, ``load_candidate``, ...) and the
  scoring primitives (``answer_logprobs``, ``teacher_forced``, ``exact_match``); the bundled
  ``evomerge.fitness.causal_lm.CausalLM`` is it plus JSONL tasks
  (:mod:`evomerge.kit.causal_lm`). What runs the model is an engine (``fitness.options.engine``:
  ``transformers`` or ``vllm``; :data:`ENGINES`, :class:`LMEngine`, :class:`Targets`;
  :mod:`evomerge.kit.lm_engine`), imported only when a plug-in starts it.
* Text: JSONL tasks and their options (:class:`LMTask`, :func:`read_jsonl`), prompt + answer
  cut at the model's own token boundary (:func:`tokenize_example`, :class:`Example`),
  end-of-sequence ids, stop strings and generated answers (:mod:`evomerge.kit.lm_text`).
* Empty models: :func:`build_empty` makes a model's parameters uninitialised, in the worker's
  dtype on its device, for weights that come from candidates (:mod:`evomerge.kit.empty_init`).
* Statistics hooks of the data-aware merges (a plug-in's ``log_likelihoods`` and
  ``linear_inputs``): :func:`split` (a flat vector as named tensors, autograd-friendly) and
  :func:`linear_layer_inputs` (the inputs of a model's linear layers over one forward pass).

The plug-in contract itself is :class:`evomerge.Fitness` (``from evomerge import Fitness``).
"""

from evomerge.kit.causal_lm import DTYPES, CausalLMBase
from evomerge.kit.empty_init import build_empty, parameters_on_meta
from evomerge.kit.layer_inputs import linear_layer_inputs
from evomerge.kit.lm_engine import ENGINES, LMEngine, Targets
from evomerge.kit.lm_text import (
    METRICS,
    Example,
    LMTask,
    answer_text,
    end_ids,
    read_jsonl,
    special_head,
    stop_criteria,
    tokenize_example,
)
from evomerge.ops.statistics import split

__all__ = [
    "DTYPES",
    "ENGINES",
    "METRICS",
    "CausalLMBase",
    "Example",
    "LMEngine",
    "LMTask",
    "Targets",
    "answer_text",
    "build_empty",
    "end_ids",
    "linear_layer_inputs",
    "parameters_on_meta",
    "read_jsonl",
    "special_head",
    "split",
    "stop_criteria",
    "tokenize_example",
]
