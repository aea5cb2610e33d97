"""A guard against searching on a well-known benchmark's test split (as mergekit-evolve's).

A search tuned on the examples a benchmark is reported on makes that report meaningless. A new
run's config is refused when a task the search scores on (``fitness.options.tasks``: a string
is an lm-eval task name, whose documents are the split lm-eval reports; a mapping's ``train``
is a JSONL file) names a benchmark below, unless the config says so with the top-level
``allow_test_split: true``. Held-out entries (``test``, ``test_tasks``) are not searched on and
are never refused.
"""

from __future__ import annotations

import re
from typing import Any

# benchmarks as they appear in file paths (whole words of the path)
FILE_BENCHMARKS = (
    "gsm8k", "mmlu", "arc", "hellaswag", "winogrande", "truthfulqa", "piqa", "boolq", "bbh",
    "humaneval", "mbpp", "math", "gpqa", "ifeval", "openbookqa", "lambada", "mathqa", "musr",
    "sciq", "triviaqa", "drop", "mgsm", "svamp", "aime", "agieval", "commonsenseqa",
)  # fmt: skip

# lm-eval task names (and their ``NAME_...`` variants) scored on the benchmark's reported split
LM_EVAL_BENCHMARKS = (
    "gsm8k", "mmlu", "arc_easy", "arc_challenge", "ai2_arc", "hellaswag", "winogrande",
    "truthfulqa", "piqa", "boolq", "bbh", "humaneval", "mbpp", "minerva_math", "hendrycks_math",
    "gpqa", "ifeval", "leaderboard", "openbookqa", "lambada", "mathqa", "musr", "sciq",
    "triviaqa", "drop", "mgsm", "agieval", "commonsense_qa", "race",
)  # fmt: skip

_WORD = re.compile(r"[a-z0-9]+")


def _lm_eval_benchmark(name: str) -> str | None:
    low = name.lower()
    return next((b for b in LM_EVAL_BENCHMARKS if low == b or low.startswith(b + "_")), None)


def _file_benchmark(path: str) -> str | None:
    """The benchmark a file's path names when its file name says ``test``, else None."""
    parts = path.replace("\\", "/").lower().split("/")
    if "test" not in _WORD.findall(parts[-1]):
        return None
    words = {w for part in parts for w in _WORD.findall(part)}
    return next((b for b in FILE_BENCHMARKS if b in words), None)


def searched_test_split(options: dict[str, Any]) -> str | None:
    """What is wrong with the first searched task that is a benchmark's test split (its
    field and why), or None."""
    tasks = options.get("tasks")
    if not isinstance(tasks, list):
        return None
    for i, task in enumerate(tasks):
        if isinstance(task, str) and (bench := _lm_eval_benchmark(task)):
            return (
                f"fitness.options.tasks[{i}]: '{task}' is lm-eval's {bench} task, scored on the "
                "split the benchmark is reported on"
            )
        train = task.get("train") if isinstance(task, dict) else None
        if isinstance(train, str) and (bench := _file_benchmark(train)):
            return f"fitness.options.tasks[{i}].train: '{train}' looks like {bench}'s test split"
    return None
