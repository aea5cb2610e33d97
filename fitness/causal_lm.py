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
        include_eos: false                       # teacher forcing also scores the stop
        stop: ["\n"]                             # exact_match: cut generations here
        chat_template: false                     # prompt as a user turn of the chat template
    batch_size: 16
    dtype: float32                               # float32 | bfloat16 | float16
    include_eos: false                           # defaults for every task's own keys
    stop: []
    chat_template: false

Per-example scores, all in [0, 1] (so resource competition can use them):

* ``exact_match``: greedy decoding of up to ``max_new_tokens`` after the prompt; 1 when the
  text before the first end-of-sequence token and the first ``stop`` string, stripped, equals
  the answer, stripped.
* ``token_accuracy``: teacher forcing; the share of the answer's tokens that are the most
  likely next token given the prompt and the answer's previous tokens.
* ``likelihood``: teacher forcing; ``exp(mean log p(answer token))``, the per-token
  geometric-mean probability of the answer.

Tokenisation is the model's own, at the boundary too: ``prompt + answer`` (the answer follows
the prompt directly, so put a separating space in one of them where the text has one) is
tokenised as one text, and the answer's tokens are those that cover its characters (from the
fast tokenizer's character offsets): SentencePiece and byte-level BPE tokenizers split a
separately tokenised answer differently from the same text after the prompt. The tokenizer's
leading special tokens (BOS) are kept; tokens it appends (an automatic EOS) are dropped, from
prompts and answers alike. ``include_eos: true`` adds one end-of-sequence target after the
answer (any of the end ids counts: a stop is rewarded, rambling on is not); the end ids are
every ``eos_token_id`` of the first seed's ``generation_config.json`` (an id or a list) and the
tokenizer's EOS. ``stop`` strings serve base models that never emit an EOS. ``chat_template:
true`` (instruct models) wraps each prompt as a user message with the tokenizer's chat template
and its generation prompt; the answer is the assistant's reply.

Examples are batched with padding (left for generation, right for teacher forcing) and the
padding never changes a score. Tasks keep their example ids apart: task ``i``'s training
examples are ids ``start_i .. stop_i - 1`` in the order of ``tasks`` (:meth:`task_ranges`),
which is what niches and per-task reports read. The flat parameter vector is the model's
parameters in ``named_parameters()`` order (tied weights once); :meth:`param_layout` names
them, so merge recipes group them by layer and kind.

For the data-aware merges (fisher, regmean), :meth:`log_likelihoods` is the teacher-forced
``log p(answer tokens | prompt)`` of each training example (plus the end target with
``include_eos``), differentiable in the flat parameters, and :meth:`linear_inputs` the inputs of
every ``nn.Linear`` whose weight is a parameter (the tied output head is not), over the
examples' real tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from evomerge import Fitness
from evomerge.runtime.lm_text import (
    Example,
    LMTask,
    answer_text,
    end_ids,
    special_head,
    stop_criteria,
    tokenize_example,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CausalLM(Fitness):
    """Per-example scores of a causal LM, assembled from a candidate vector, on JSONL tasks."""

    score_name = "score"

    def __init__(
        self,
        seeds: list[str],
        tasks: list[dict],
        batch_size: int = 16,
        dtype: str = "float32",
        include_eos: bool = False,
        stop: list[str] | str = (),
        chat_template: bool = False,
    ):
        if not tasks:
            raise ValueError("tasks: give at least one task")
        self._model_options(seeds, batch_size, dtype)
        defaults = {"include_eos": include_eos, "stop": stop, "chat_template": chat_template}
        self.tasks = [LMTask(t, i, defaults) for i, t in enumerate(tasks)]

    def _model_options(self, seeds: list[str], batch_size: int, dtype: str) -> None:
        if not seeds:
            raise ValueError("seeds: give at least one model folder")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: '{dtype}' is not one of {sorted(DTYPES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.seed_paths = [Path(s) for s in seeds]
        self.batch_size = batch_size
        self.dtype = DTYPES[dtype]

    # --- set-up ---------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        first = self.seed_paths[0]
        from evomerge.runtime.empty_init import build_empty

        config = AutoConfig.from_pretrained(first)
        # weights come from candidates: parameters made empty in the worker's dtype on its
        # device, never a random float32 initialisation on the CPU
        self.model = build_empty(
            lambda: AutoModelForCausalLM.from_config(config), device, self.dtype
        ).eval()
        self.device = torch.device(device)
        self.params = list(self.model.parameters())
        self.layout = [(n, tuple(p.shape)) for n, p in self.model.named_parameters()]
        self.num_params = sum(p.numel() for p in self.params)
        self._setup_text(first)

    # --- tokenising -----------------------------------------------------------------------

    def _setup_tokenizer(self, first: Path) -> None:
        """The first seed's tokenizer, its end-of-sequence ids, pad id and leading specials."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(first)
        self.eos_ids = end_ids(first, tok)
        self.eos = self.eos_ids[0] if self.eos_ids else None
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos
        if self.pad is None:
            raise ValueError(f"{first}: the tokenizer has neither a pad nor an eos token")
        self.tokenizer = tok
        self.head = special_head(tok)

    def _setup_text(self, first: Path) -> None:
        """The tokenizer, and every task's examples tokenised."""
        self._setup_tokenizer(first)
        start = 0
        self.ranges = []
        for i, task in enumerate(self.tasks):
            if task.include_eos and not self.eos_ids:
                raise ValueError(
                    f"tasks[{i}].include_eos: {first} names no end-of-sequence id "
                    "(generation_config.json eos_token_id or the tokenizer's eos_token)"
                )
            if task.chat_template and not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    f"tasks[{i}].chat_template: the tokenizer of {first} has no chat template; "
                    "set chat_template: false or use an instruct model's folder"
                )
            task.train_tok = [self._tokenize(e, task) for e in task.train]
            task.test_tok = [self._tokenize(e, task) for e in task.test]
            self.ranges.append((task.name, start, start + len(task.train)))
            start += len(task.train)
        self.num_examples = start

    def _tokenize(self, example: dict, task: LMTask) -> Example:
        return tokenize_example(self.tokenizer, self.head, example, task.chat_template, task.name)

    def task_ranges(self) -> list[tuple[str, int, int]]:
        """``(name, start, stop)`` of each task's training example ids."""
        return list(self.ranges)

    def param_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return list(self.layout)

    def export_info(self) -> dict:
        """Config and tokenizer files of the first seed, its dtype, and the seed folders."""
        from evomerge.tensors.safetensors_io import SeedModel

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
        from evomerge.tensors.safetensors_io import SeedModel

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

    # --- statistics of the data-aware merges ------------------------------------------------

    def _examples(self, example_ids) -> list[tuple[Example, LMTask]]:
        out = []
        for i in torch.as_tensor(example_ids).tolist():
            for task, (_, start, stop) in zip(self.tasks, self.ranges, strict=True):
                if start <= i < stop:
                    out.append((task.train_tok[i - start], task))
                    break
            else:
                raise ValueError(f"example id {i} is not in 0..{self.num_examples - 1}")
        return out

    def _padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, attention mask)`` on the device, right-padded: real tokens keep positions
        ``0..len-1``, as teacher forcing scores them."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    def log_likelihoods(self, params: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log p(answer [+ end] | prompt)`` per example, differentiable."""
        from evomerge.ops.statistics import split

        examples = self._examples(example_ids)
        tensors = split(params.to(self.device, self.dtype), self.layout)
        ids, mask = self._padded([e.prefix + e.answer for e, _ in examples])
        logits = torch.func.functional_call(
            self.model, tensors, (), {"input_ids": ids, "attention_mask": mask}
        ).logits
        out = []
        for r, (e, task) in enumerate(examples):
            end = len(e.prefix) + len(e.answer)
            logp = torch.log_softmax(logits[r, len(e.prefix) - 1 : end].float(), dim=-1)
            target = torch.tensor(e.answer, dtype=torch.long, device=logp.device)
            total = logp[: len(e.answer)].gather(1, target[:, None]).sum()
            if task.include_eos:
                ends = torch.tensor(self.eos_ids, dtype=torch.long, device=logp.device)
                total = total + torch.logsumexp(logp[len(e.answer), ends], dim=0)
            out.append(total)
        return torch.stack(out)

    @torch.no_grad()
    def linear_inputs(self, params: torch.Tensor, example_ids: torch.Tensor):
        """``{weight name: (tokens, in)}`` inputs of each linear layer on the examples."""
        from evomerge.ops.statistics import linear_layer_inputs

        self._load(params.reshape(-1))
        ids, mask = self._padded([e.prefix + e.answer for e, _ in self._examples(example_ids)])
        names = {n for n, _ in self.layout}
        return linear_layer_inputs(
            self.model, names, mask.bool(), lambda: self.model(input_ids=ids, attention_mask=mask)
        )

    # --- scoring --------------------------------------------------------------------------

    def _score_task(self, task: LMTask, examples: list, metric: str | None = None) -> torch.Tensor:
        metric = metric or task.metric
        scores = []
        for i in range(0, len(examples), self.batch_size):
            batch = examples[i : i + self.batch_size]
            if metric == "exact_match":
                scores.append(self._exact_match(batch, task.max_new_tokens, task.stop))
            else:
                scores.append(self._teacher_forced(batch, metric, task.include_eos))
        return torch.cat(scores)

    @torch.no_grad()
    def _answer_logprobs(self, batch: list[Example]) -> list[torch.Tensor]:
        """Per example, ``(len(answer) + 1, vocab)`` next-token log-probabilities: after each
        of the prefix's last token and the answer's tokens (the last row: after the answer)."""
        seqs = [e.prefix + e.answer for e in batch]
        ids, mask = self._padded(seqs)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        return [
            torch.log_softmax(logits[r, len(e.prefix) - 1 : len(s)].float(), dim=-1)
            for r, (e, s) in enumerate(zip(batch, seqs, strict=True))
        ]

    def _teacher_forced(self, batch: list[Example], metric: str, eos: bool) -> torch.Tensor:
        out = torch.empty(len(batch))
        for r, (e, logp) in enumerate(zip(batch, self._answer_logprobs(batch), strict=True)):
            n = len(e.answer) + int(eos)  # targets: the answer's tokens, then any end id
            if n == 0:
                out[r] = 1.0
                continue
            ends = torch.tensor(self.eos_ids, dtype=torch.long, device=logp.device)
            target = torch.tensor(e.answer, dtype=torch.long, device=logp.device)
            if metric == "token_accuracy":
                best = logp.argmax(dim=-1)
                hits = (best[: len(e.answer)] == target).float().sum()
                if eos:
                    hits += torch.isin(best[-1], ends).float()
                out[r] = (hits / n).item()
            else:
                total = logp[: len(e.answer)].gather(1, target[:, None]).sum()
                if eos:
                    total += torch.logsumexp(logp[-1, ends], dim=0)
                out[r] = math.exp(total.item() / n)
        return out

    @torch.no_grad()
    def _exact_match(self, batch: list[Example], max_new_tokens: int, stop=()) -> torch.Tensor:
        width = max(len(e.prompt) for e in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, e in enumerate(batch):  # left padding: prompts end together
            ids[r, width - len(e.prompt) :] = torch.tensor(e.prompt)
            mask[r, width - len(e.prompt) :] = 1
        generated = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad,
            eos_token_id=self.eos_ids or None,
            stopping_criteria=stop_criteria(self.tokenizer, width, stop),
        )[:, width:].cpu()
        out = torch.empty(len(batch))
        for r, e in enumerate(batch):
            out[r] = float(
                answer_text(self.tokenizer, self.eos_ids, generated[r].tolist(), stop)
                == e.text.strip()
            )
        return out
