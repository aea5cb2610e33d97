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
    engine: transformers                         # transformers | vllm (one resident vLLM
    engine_args: {}                              # engine per worker; its LLM(...) arguments)
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

Both engines give every metric (``engine: vllm`` generates greedily with the end ids as stop
ids and reads teacher-forced scores from prompt log-probabilities; it takes all examples at
once), so a search switches engines without changing its task file;
:mod:`evomerge.kit.vllm_engine` documents its arguments and limits. With the ``transformers``
engine, examples are batched with padding (left for generation, right for teacher forcing) and the
padding never changes a score. Tasks keep their example ids apart: task ``i``'s training
examples are ids ``start_i .. stop_i - 1`` in the order of ``tasks`` (:meth:`task_ranges`),
which is what niches and per-task reports read. The flat parameter vector is the model's
parameters in ``named_parameters()`` order (tied weights once); :meth:`param_layout` names
them, so merge recipes group them by layer and kind. The model, tokenizer and scoring are
:class:`evomerge.kit.CausalLMBase`'s; this class adds the JSONL tasks.

For the data-aware merges (fisher, regmean), :meth:`log_likelihoods` is the teacher-forced
``log p(answer tokens | prompt)`` of each training example (plus the end target with
``include_eos``), differentiable in the flat parameters, and :meth:`linear_inputs` the inputs of
every ``nn.Linear`` whose weight is a parameter (the tied output head is not), over the
examples' real tokens. For AdaMerging, :meth:`log_probabilities` is the next-token
distribution at every answer position (labels unused).
"""

from __future__ import annotations

import torch

from evomerge.kit import CausalLMBase, Example, LMTask, linear_layer_inputs, split, tokenize_example


class CausalLM(CausalLMBase):
    """Per-example scores of a causal LM, assembled from a candidate vector, on JSONL tasks."""

    def __init__(
        self,
        seeds: list[str],
        tasks: list[dict],
        batch_size: int = 16,
        dtype: str = "float32",
        include_eos: bool = False,
        stop: list[str] | str = (),
        chat_template: bool = False,
        engine: str = "transformers",
        engine_args: dict | None = None,
    ):
        if not tasks:
            raise ValueError("tasks: give at least one task")
        super().__init__(seeds, batch_size, dtype, engine, engine_args)
        defaults = {"include_eos": include_eos, "stop": stop, "chat_template": chat_template}
        self.tasks = [LMTask(t, i, defaults) for i, t in enumerate(tasks)]

    def setup_tasks(self, folder) -> None:
        """The tokenizer of ``folder``, and every task's examples tokenised."""
        self.setup_tokenizer(folder)
        start = 0
        self.ranges = []
        for i, task in enumerate(self.tasks):
            if task.include_eos and not self.eos_ids:
                raise ValueError(
                    f"tasks[{i}].include_eos: {folder} names no end-of-sequence id "
                    "(generation_config.json eos_token_id or the tokenizer's eos_token)"
                )
            if task.chat_template and not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    f"tasks[{i}].chat_template: the tokenizer of {folder} has no chat template; "
                    "set chat_template: false or use an instruct model's folder"
                )
            task.train_tok = [self._tokenize(e, task) for e in task.train]
            task.test_tok = [self._tokenize(e, task) for e in task.test]
            self.ranges.append((task.name, start, start + len(task.train)))
            start += len(task.train)
        self.num_examples = start

    def _tokenize(self, example: dict, task: LMTask) -> Example:
        return tokenize_example(self.tokenizer, self.head, example, task.chat_template, task.name)

    # --- scores of the loaded model ---------------------------------------------------------

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
                out[cols] = self.score_task(task, chosen)
        return out

    def metrics_loaded(self) -> dict[str, float]:
        found = {}
        for task in self.tasks:
            if task.test_tok:
                scores = self.score_task(task, task.test_tok, task.test_metric)
                found[f"test_{task.name}_{task.test_metric}"] = scores.mean().item()
        if len(found) > 1:
            found["test_mean"] = sum(found.values()) / len(found)
        return found

    def score_task(self, task: LMTask, examples: list, metric: str | None = None) -> torch.Tensor:
        """Scores of ``task``'s tokenised ``examples`` under ``metric`` (default: the task's),
        ``batch_size`` examples at a time (all at once for an engine that batches itself)."""
        metric = metric or task.metric
        scores = []
        for batch in self.chunks(examples):
            if metric == "exact_match":
                scores.append(self.exact_match(batch, task.max_new_tokens, task.stop))
            else:
                scores.append(self.teacher_forced(batch, metric, task.include_eos))
        return torch.cat(scores)

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

    def log_likelihoods(self, params: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log p(answer [+ end] | prompt)`` per example, differentiable."""
        examples = self._examples(example_ids)
        tensors = split(params.to(self.device, self.dtype), self.layout)
        ids, mask = self.padded([e.prefix + e.answer for e, _ in examples])
        model = self.hf_model("log_likelihoods (fisher statistics)")
        logits = torch.func.functional_call(
            model, tensors, (), {"input_ids": ids, "attention_mask": mask}
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

    def log_probabilities(self, params: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor:
        """``(answer tokens, vocabulary)``: the log-softmax of the model's next-token
        distribution at every answer position of the listed examples (the answer tokens are the
        context, never a target), differentiable: the rows AdaMerging takes the entropy of."""
        examples = self._examples(example_ids)
        tensors = split(params.to(self.device, self.dtype), self.layout)
        ids, mask = self.padded([e.prefix + e.answer for e, _ in examples])
        logits = torch.func.functional_call(
            self.model, tensors, (), {"input_ids": ids, "attention_mask": mask}
        ).logits
        rows = [
            logits[r, len(e.prefix) - 1 : len(e.prefix) + len(e.answer) - 1]
            for r, (e, _) in enumerate(examples)
        ]
        return torch.log_softmax(torch.cat(rows).float(), dim=-1)

    @torch.no_grad()
    def linear_inputs(self, params: torch.Tensor, example_ids: torch.Tensor):
        """``{weight name: (tokens, in)}`` inputs of each linear layer on the examples."""
        self.hf_model("linear_inputs (regmean statistics)")
        self.load_candidate(params.reshape(-1))
        ids, mask = self.padded([e.prefix + e.answer for e, _ in self._examples(example_ids)])
        names = {n for n, _ in self.layout}
        return linear_layer_inputs(
            self.model, names, mask.bool(), lambda: self.model(input_ids=ids, attention_mask=mask)
        )
