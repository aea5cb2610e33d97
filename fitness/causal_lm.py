"""Causal language models as a fitness: per-example scores of a candidate LM on JSONL tasks.

The candidate is the model the seeds' ``config.json`` describes (built with ``transformers``,
no weights downloaded), its parameters set from the candidate's flat vector. Options
(``fitness.options`` in a run config)::

    seeds: [models/expert-a, models/expert-b]   # Hugging Face folders on disk (config,
                                                 # tokenizer, safetensors); the first one
                                                 # gives the architecture and tokenizer
    tasks:
      - name: addition
        train: data/addition.train.jsonl         # {"prompt": ..., "answer": ..., "id": ...}
        test: data/addition.test.jsonl           # optional: held-out metrics
        metric: exact_match                      # exact_match | token_accuracy | likelihood
        test_metric: exact_match                 # for the held-out file (default: metric)
        max_new_tokens: 16                       # exact_match only
        limit: 64                                # use the first 64 training examples only
    batch_size: 16
    dtype: float32                               # float32 | bfloat16 | float16

Per-example scores, all in [0, 1] (so resource competition can use them):

* ``exact_match``: greedy decoding of up to ``max_new_tokens`` after the prompt; 1 when the
  text before the first end-of-sequence token, stripped, equals the answer, stripped.
* ``token_accuracy``: teacher forcing; the share of the answer's tokens that are the most
  likely next token given the prompt and the answer's previous tokens.
* ``likelihood``: teacher forcing; ``exp(mean log p(answer token))``, the per-token
  geometric-mean probability of the answer.

The prompt is tokenised as the tokenizer does by default (BOS included where it adds one) and
the answer without special tokens, then the two are concatenated, so the boundary is exact.
Examples are batched with padding (left for generation, right for teacher forcing) and the
padding never changes a score. Tasks keep their example ids apart: task ``i``'s training
examples are ids ``start_i .. stop_i - 1`` in the order of ``tasks`` (:meth:`task_ranges`),
which is what niches and per-task reports read. The flat parameter vector is the model's
parameters in ``named_parameters()`` order (tied weights once); :meth:`param_layout` names
them, so merge recipes group them by layer and kind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from evomerge import Fitness

METRICS = ("exact_match", "token_accuracy", "likelihood")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


class _Task:
    """One task's settings and its tokenised train and test examples."""

    def __init__(self, spec: dict, index: int):
        known = {"name", "train", "test", "metric", "test_metric", "max_new_tokens", "limit"}
        unknown = set(spec) - known
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
        self.max_new_tokens = int(spec.get("max_new_tokens", 32))
        self.train = read_jsonl(Path(spec["train"]))
        if spec.get("limit") is not None:
            self.train = self.train[: int(spec["limit"])]
        self.test = read_jsonl(Path(spec["test"])) if spec.get("test") else []


class CausalLM(Fitness):
    """Per-example scores of a causal LM, assembled from a candidate vector, on JSONL tasks."""

    score_name = "score"

    def __init__(
        self,
        seeds: list[str],
        tasks: list[dict],
        batch_size: int = 16,
        dtype: str = "float32",
    ):
        if not seeds:
            raise ValueError("seeds: give at least one model folder")
        if not tasks:
            raise ValueError("tasks: give at least one task")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: '{dtype}' is not one of {sorted(DTYPES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.seed_paths = [Path(s) for s in seeds]
        self.tasks = [_Task(t, i) for i, t in enumerate(tasks)]
        self.batch_size = batch_size
        self.dtype = DTYPES[dtype]

    # --- set-up ---------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        first = self.seed_paths[0]
        from evomerge.runtime.empty_init import build_empty

        config = AutoConfig.from_pretrained(first)
        # weights come from candidates: parameters made empty in the worker's dtype on its
        # device, never a random float32 initialisation on the CPU
        self.model = build_empty(
            lambda: AutoModelForCausalLM.from_config(config), device, self.dtype
        ).eval()
        self.device = torch.device(device)
        tok = AutoTokenizer.from_pretrained(first)
        self.eos = tok.eos_token_id
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos
        if self.pad is None:
            raise ValueError(f"{first}: the tokenizer has neither a pad nor an eos token")
        self.tokenizer = tok
        self.params = list(self.model.parameters())
        self.layout = [(n, tuple(p.shape)) for n, p in self.model.named_parameters()]
        self.num_params = sum(p.numel() for p in self.params)
        start = 0
        self.ranges = []
        for task in self.tasks:
            task.train_tok = [self._tokenize(e) for e in task.train]
            task.test_tok = [self._tokenize(e) for e in task.test]
            self.ranges.append((task.name, start, start + len(task.train)))
            start += len(task.train)
        self.num_examples = start

    def _tokenize(self, example: dict) -> tuple[list[int], list[int], str]:
        prompt = self.tokenizer(example["prompt"])["input_ids"]
        answer = self.tokenizer(example["answer"], add_special_tokens=False)["input_ids"]
        return prompt, answer, example["answer"]

    def task_ranges(self) -> list[tuple[str, int, int]]:
        """``(name, start, stop)`` of each task's training example ids."""
        return list(self.ranges)

    def param_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return list(self.layout)

    def export_info(self) -> dict:
        """Config and tokenizer files of the first seed, its dtype, and the seed folders."""
        from evomerge.merge.safetensors_io import SeedModel

        first = SeedModel(self.seed_paths[0])
        try:
            dtype = str(first.dtype(self.layout[0][0])).removeprefix("torch.")
            files = [str(p) for p in first.extra_files()]
        finally:
            first.close()
        return {"files": files, "dtype": dtype, "seeds": [str(p) for p in self.seed_paths]}

    # --- candidates -----------------------------------------------------------------------

    def _load(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(vector.to(self.device, self.dtype), self.params)

    def score(self, params: torch.Tensor, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for vector in params:
            self._load(vector)
            out.append(self.score_loaded(example_ids))
        return torch.stack(out)

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        self._load(params.reshape(-1))
        return self.metrics_loaded()

    # --- the resident model (lineage candidates are written straight into it) --------------

    def seed_folders(self) -> list[str]:
        return [str(p) for p in self.seed_paths]

    def resident_tensors(self) -> list[torch.Tensor]:
        return self.params

    def score_loaded(self, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = (
            torch.arange(self.num_examples)
            if example_ids is None
            else torch.as_tensor(example_ids).cpu()
        )
        out = torch.empty(len(ids))
        for task, (_, start, stop) in zip(self.tasks, self.ranges, strict=True):
            cols = torch.nonzero((ids >= start) & (ids < stop)).squeeze(1)
            if len(cols):
                chosen = [task.train_tok[int(i) - start] for i in ids[cols]]
                out[cols] = self._score_task(task, chosen)
        return out

    def metrics_loaded(self) -> dict[str, float]:
        found = {}
        for task in self.tasks:
            if task.test_tok:
                scores = self._score_task(task, task.test_tok, task.test_metric)
                found[f"test_{task.name}_{task.test_metric}"] = scores.mean().item()
        if len(found) > 1:
            found["test_mean"] = sum(found.values()) / len(found)
        return found

    def make_seeds(self, count: int, seed: int) -> torch.Tensor:
        """The seed folders' weights as flat vectors, in the order of ``seeds``."""
        from evomerge.merge.safetensors_io import SeedModel

        if count != len(self.seed_paths):
            raise ValueError(f"seeds.count is {count} but {len(self.seed_paths)} folders are given")
        rows = []
        for path in self.seed_paths:
            model = SeedModel(path)
            try:
                parts = []
                for name, shape in self.layout:
                    t = model.get(name, dtype=torch.float32)
                    if tuple(t.shape) != shape:
                        raise ValueError(
                            f"{path}: tensor '{name}' has shape {tuple(t.shape)}, the model "
                            f"built from {self.seed_paths[0]} expects {shape}"
                        )
                    parts.append(t.reshape(-1))
            except KeyError as exc:
                raise ValueError(str(exc).strip("'\"")) from None
            finally:
                model.close()
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    # --- scoring --------------------------------------------------------------------------

    def _score_task(self, task: _Task, examples: list, metric: str | None = None) -> torch.Tensor:
        metric = metric or task.metric
        scores = []
        for i in range(0, len(examples), self.batch_size):
            batch = examples[i : i + self.batch_size]
            if metric == "exact_match":
                scores.append(self._exact_match(batch, task.max_new_tokens))
            else:
                scores.append(self._teacher_forced(batch, metric))
        return torch.cat(scores)

    @torch.no_grad()
    def _teacher_forced(self, batch, metric: str) -> torch.Tensor:
        seqs = [p + a for p, a, _ in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):  # right padding: real tokens keep positions 0..len-1
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).logits.float()
        out = torch.empty(len(batch))
        for r, (prompt, answer, _) in enumerate(batch):
            if not answer:
                out[r] = 1.0
                continue
            pos = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
            target = torch.tensor(answer, device=logits.device)
            rows = logits[r, pos.to(logits.device)]
            if metric == "token_accuracy":
                out[r] = (rows.argmax(dim=-1) == target).float().mean().item()
            else:
                logp = torch.log_softmax(rows, dim=-1).gather(1, target[:, None])
                out[r] = math.exp(logp.mean().item())
        return out

    @torch.no_grad()
    def _exact_match(self, batch, max_new_tokens: int) -> torch.Tensor:
        width = max(len(p) for p, _, _ in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (prompt, _, _) in enumerate(batch):  # left padding: prompts end together
            ids[r, width - len(prompt) :] = torch.tensor(prompt)
            mask[r, width - len(prompt) :] = 1
        generated = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
        )[:, width:].cpu()
        out = torch.empty(len(batch))
        for r, (_, _, answer) in enumerate(batch):
            tokens = generated[r].tolist()
            if self.eos is not None and self.eos in tokens:
                tokens = tokens[: tokens.index(self.eos)]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            out[r] = float(text.strip() == answer.strip())
        return out
