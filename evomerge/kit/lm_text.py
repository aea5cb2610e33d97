"""Text tasks for language-model fitnesses: JSONL examples, task options, tokenising prompt +
answer at the model's own boundary, end-of-sequence ids, and stop strings.

Kept in the package (not next to a plug-in file) so every LM plug-in, on every node, cuts
prompts and answers the same way; ``fitness/causal_lm.py`` documents the options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

METRICS = ("exact_match", "token_accuracy", "likelihood")


def read_jsonl(path: Path) -> list[dict]:
    """``prompt`` / ``answer`` records of one JSONL file, checked line by line."""
    examples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(k), str) for k in ("prompt", "answer")
        ):
            raise ValueError(f"{path}:{number}: needs string fields 'prompt' and 'answer'")
        examples.append(record)
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


TASK_DEFAULTS = {"include_eos": False, "stop": (), "chat_template": False}


def _stops(value, where: str) -> tuple[str, ...]:
    stops = (value,) if isinstance(value, str) else value
    if not isinstance(stops, list | tuple) or not all(isinstance(x, str) and x for x in stops):
        raise ValueError(f"{where}: give a string or a list of non-empty strings")
    return tuple(stops)


class LMTask:
    """One task's settings and its tokenised train and test examples."""

    def __init__(self, spec: dict, index: int, defaults: dict | None = None):
        known = {"name", "train", "test", "metric", "test_metric", "max_new_tokens", "limit"}
        unknown = set(spec) - known - set(TASK_DEFAULTS)
        if unknown:
            raise ValueError(f"tasks[{index}]: unknown key '{sorted(unknown)[0]}'")
        if "train" not in spec:
            raise ValueError(f"tasks[{index}]: 'train' (a JSONL file) is required")
        self.name = str(spec.get("name", f"task{index}"))
        self.metric = spec.get("metric", "exact_match")
        self.test_metric = spec.get("test_metric", self.metric)
        for key in ("metric", "test_metric"):
            if getattr(self, key) not in METRICS:
                raise ValueError(
                    f"tasks[{index}].{key}: '{getattr(self, key)}' is not one of {METRICS}"
                )
        options = {**TASK_DEFAULTS, **(defaults or {}), **spec}
        for key in ("include_eos", "chat_template"):
            if not isinstance(options[key], bool):
                raise ValueError(f"tasks[{index}].{key}: '{options[key]}' is not true or false")
        self.include_eos = options["include_eos"]
        self.chat_template = options["chat_template"]
        self.stop = _stops(options["stop"], f"tasks[{index}].stop")
        self.max_new_tokens = int(spec.get("max_new_tokens", 32))
        self.train = read_jsonl(Path(spec["train"]))
        if spec.get("limit") is not None:
            self.train = self.train[: int(spec["limit"])]
        self.test = read_jsonl(Path(spec["test"])) if spec.get("test") else []


class Example(NamedTuple):
    """One tokenised example: the prompt alone (for generation), and prompt + answer as one
    text cut into the prompt's tokens and the answer's (for teacher forcing)."""

    prompt: list[int]
    prefix: list[int]
    answer: list[int]
    text: str


def end_ids(folder: Path, tok) -> list[int]:
    """Every end-of-sequence id: ``generation_config.json``'s (an id or a list), then the
    tokenizer's EOS, in that order, each once."""
    from transformers import GenerationConfig

    ends = []
    if (Path(folder) / "generation_config.json").is_file():
        ends = GenerationConfig.from_pretrained(folder).eos_token_id
        ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)
    return [int(i) for i in dict.fromkeys([*ends, tok.eos_token_id]) if i is not None]


def special_head(tok) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS), without those it appends."""
    body = tok("x", add_special_tokens=False)["input_ids"]
    full = tok("x")["input_ids"]
    return full[: next(h for h in range(len(full)) if full[h : h + len(body)] == body)]


def tokenize_example(
    tok, head: list[int], example: dict, chat_template: bool = False, name: str = ""
) -> Example:
    """Prompt alone, and prompt + answer as one text cut where the answer's characters start
    (a token that straddles the boundary belongs to the answer). ``head``: the tokenizer's
    leading special tokens (:func:`special_head`); what it appends is never used."""
    prompt, answer = example["prompt"], example["answer"]
    if chat_template:
        turn = [{"role": "user", "content": prompt}]
        prompt = tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        head = []  # the template writes its own special tokens
    alone = head + tok(prompt, add_special_tokens=False)["input_ids"]
    if tok.is_fast:
        both = tok(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = both["input_ids"], both["offset_mapping"]
        cut = next((i for i, (_, end) in enumerate(offsets) if end > len(prompt)), len(ids))
    else:  # no offsets: the answer starts where the two tokenisations part
        ids = tok(prompt + answer, add_special_tokens=False)["input_ids"]
        pairs = zip(alone[len(head) :], ids, strict=False)
        cut = next((i for i, (a, b) in enumerate(pairs) if a != b), len(alone) - len(head))
        cut = min(cut, len(ids))
    prefix = head + ids[:cut]
    if not prefix:
        raise ValueError(
            f"task '{name}': prompt {example['prompt']!r} has no tokens and the tokenizer "
            "adds no BOS; give each example a non-empty prompt"
        )
    return Example(alone, prefix, ids[cut:], answer)


def answer_text(tok, eos_ids: list[int], tokens: list[int], stop=(), strip=True) -> str:
    """Generated text up to the first end id and the first stop string, stripped."""
    ends = [tokens.index(i) for i in eos_ids if i in tokens]
    text = tok.decode(tokens[: min(ends, default=len(tokens))], skip_special_tokens=True)
    for s in stop:
        text = text.split(s, 1)[0]
    return text.strip() if strip else text


def stop_criteria(tok, width: int, stop):
    """Ends a row's generation once its new text holds a stop string (scores are cut at the
    stop string either way; this only saves the steps after it)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    if not stop:
        return None

    class Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tok.batch_decode(input_ids[:, width:], skip_special_tokens=True)
            done = [any(s in t for s in stop) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Stop()])
