"""A causal-LM fitness for multiple-choice questions, built on evomerge.kit.

Each JSONL line is ``{"prompt": ..., "choices": [...], "answer": ...}``, the answer one of the
choices. A question scores 1 when the model gives its answer a higher log-likelihood after the
prompt than every other choice, else 0. CausalLMBase builds the model from the seeds, loads
candidates into it and keeps the resident-model contract; this file adds the questions
(setup_tasks, score_loaded) and the statistics hooks of the data-aware merges.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.kit import CausalLMBase, linear_layer_inputs, read_jsonl, split, tokenize_example


class MultipleChoice(CausalLMBase):
    score_name = "accuracy"  # the summary reports train_accuracy

    def __init__(self, seeds: list[str], questions: str, dtype: str = "float32"):
        super().__init__(seeds, dtype=dtype)  # checks seeds and dtype
        self.questions = read_jsonl(Path(questions))  # prompt and answer: strings
        for n, q in enumerate(self.questions, 1):
            if q["answer"] not in q.get("choices", []):
                raise ValueError(f"questions: line {n}: the answer is not one of the choices")

    def setup_tasks(self, folder):
        # The hook setup() calls once the model is built: tokenise every choice after its
        # prompt, cut where the choice's characters start, as the model's tokenizer cuts it.
        self.setup_tokenizer(folder)  # self.tokenizer, self.head, self.pad, self.eos_ids
        self.options = [
            [
                tokenize_example(self.tokenizer, self.head, {"prompt": q["prompt"], "answer": c})
                for c in q["choices"]
            ]
            for q in self.questions
        ]
        self.right = [q["choices"].index(q["answer"]) for q in self.questions]
        self.ranges = [("questions", 0, len(self.questions))]  # task_ranges(), example_groups()
        self.num_examples = len(self.questions)

    def choice_logps(self, question: int) -> torch.Tensor:
        """log p(choice | prompt) of each choice of ``question``, under the loaded model."""
        batch = self.options[question]
        out = []
        for e, logp in zip(batch, self.answer_logprobs(batch), strict=True):
            target = torch.tensor(e.answer, device=logp.device)
            out.append(logp[: len(e.answer)].gather(1, target[:, None]).sum())
        return torch.stack(out)

    def score_loaded(self, example_ids=None):
        # score() and the lineage workers load a candidate into the model, then call this
        ids = range(self.num_examples) if example_ids is None else example_ids.tolist()
        right = [self.choice_logps(i).argmax().item() == self.right[i] for i in ids]
        return torch.tensor(right, dtype=torch.float32)

    # --- statistics hooks: fisher and regmean merges weigh models by these questions ---------

    def _answers(self, example_ids):
        chosen = [self.options[i][self.right[i]] for i in example_ids.tolist()]
        return chosen, self.padded([e.prefix + e.answer for e in chosen])

    def log_likelihoods(self, params, example_ids):
        """log p(answer | prompt) per question, differentiable in ``params`` (Fisher)."""
        chosen, (ids, mask) = self._answers(example_ids)
        tensors = split(params.to(self.device, self.dtype), self.layout)  # named views
        inputs = {"input_ids": ids, "attention_mask": mask}
        logits = torch.func.functional_call(self.model, tensors, (), inputs).logits
        out = []
        for r, e in enumerate(chosen):
            rows = logits[r, len(e.prefix) - 1 : len(e.prefix) + len(e.answer) - 1]
            target = torch.tensor(e.answer, device=rows.device)
            out.append(torch.log_softmax(rows.float(), -1).gather(1, target[:, None]).sum())
        return torch.stack(out)

    @torch.no_grad()
    def linear_inputs(self, params, example_ids):
        """Each linear layer's inputs over the questions' prompt + answer tokens (RegMean)."""
        self.load_candidate(params.reshape(-1))
        _, (ids, mask) = self._answers(example_ids)
        names = {name for name, _ in self.layout}

        def forward():
            return self.model(input_ids=ids, attention_mask=mask)

        return linear_layer_inputs(self.model, names, mask.bool(), forward)
