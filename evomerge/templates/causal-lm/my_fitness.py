"""The fitness of this project: causal LMs merged by the search, scored on your JSONL task.

evomerge's ready causal-LM plug-in (``evomerge.fitness.causal_lm``) does the work: it builds
the model from the seeds' ``config.json`` and scores every example (exact match, token
accuracy or likelihood, all in [0, 1]). This file names your models and task, relative to
this folder so the search runs from anywhere. The one edit: ``SEEDS``, Hugging Face folders
(config, tokenizer, safetensors) of fine-tunes of one base model; then put your examples in
``data/`` as ``{"prompt": ..., "answer": ...}`` lines.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.fitness.causal_lm import CausalLM

HERE = Path(__file__).resolve().parent
SEEDS = ["models/expert-a", "models/expert-b"]
TASKS = [
    {
        "name": "my_task",
        "train": "data/my_task.train.jsonl",  # what the search scores
        "test": "data/my_task.test.jsonl",  # held out: reported, never searched on
        "metric": "exact_match",  # exact_match | token_accuracy | likelihood
        "max_new_tokens": 16,
    }
]


def here(path: str) -> str:
    return str(HERE / path)  # an absolute path stays as it is


class MyFitness(CausalLM):
    """The causal-LM fitness on this project's models and task (paths relative to here)."""

    def __init__(self, seeds=SEEDS, tasks=TASKS, batch_size: int = 16, dtype: str = "float32"):
        tasks = [{**t, **{k: here(t[k]) for k in ("train", "test") if t.get(k)}} for t in tasks]
        super().__init__([here(s) for s in seeds], tasks, batch_size=batch_size, dtype=dtype)
