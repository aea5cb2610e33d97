"""The ``transformers`` engine: the plug-in's own Hugging Face model, padded batches.

The model is built from the first seed's ``config.json`` with empty parameters (candidates fill
them) and kept as ``fit.model``; its parameters are the resident tensors lineage and recipe
candidates are copied into. Teacher forcing is one right-padded forward pass per batch;
generation is ``generate`` over a left-padded batch (padding never changes a score).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from evomerge.kit.empty_init import build_empty
from evomerge.kit.lm_engine import LMEngine, Targets
from evomerge.kit.lm_text import stop_criteria


class TransformersEngine(LMEngine):
    """``fit.model``, a Hugging Face causal LM in the plug-in's dtype on the worker's device."""

    def start(self, device: torch.device) -> list[tuple[str, tuple[int, ...]]]:
        from transformers import AutoConfig, AutoModelForCausalLM

        if self.engine_args:
            raise ValueError(
                f"engine_args: the transformers engine takes none (got "
                f"{', '.join(sorted(self.engine_args))}); they are for engine: vllm"
            )
        fit = self.fit
        config = AutoConfig.from_pretrained(fit.model_folder(0))
        # weights come from candidates: parameters made empty in the worker's dtype on its
        # device, never a random float32 initialisation on the CPU
        fit.model = build_empty(
            lambda: AutoModelForCausalLM.from_config(config), device, fit.dtype
        ).eval()
        return [(n, tuple(p.shape)) for n, p in fit.model.named_parameters()]

    def resident_tensors(self) -> list[torch.Tensor]:
        return list(self.fit.model.parameters())

    @torch.no_grad()
    def load(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.fit.model.named_parameters())
        for name, t in tensors:
            params[name].copy_(t.reshape(params[name].shape))

    @torch.no_grad()
    def logprobs(self, batch: list) -> list[torch.Tensor]:
        """Per example, ``(len(answer) + 1, vocab)`` float32 next-token log-probabilities:
        after the prefix's last token and after each answer token."""
        fit = self.fit
        seqs = [e.prefix + e.answer for e in batch]
        ids, mask = fit.padded(seqs)
        logits = fit.model(input_ids=ids, attention_mask=mask).logits
        return [
            torch.log_softmax(logits[r, len(e.prefix) - 1 : len(s)].float(), dim=-1)
            for r, (e, s) in enumerate(zip(batch, seqs, strict=True))
        ]

    def targets(self, batch: list, ends: list[int] | None) -> list[Targets]:
        out = []
        for e, logp in zip(batch, self.logprobs(batch), strict=True):
            target = torch.tensor(e.answer, dtype=torch.long, device=logp.device)
            rows = logp[: len(e.answer)]
            found = Targets(
                rows.gather(1, target[:, None])[:, 0].cpu(),
                (rows.argmax(dim=-1) == target).cpu(),
            )
            if ends:
                ids = torch.tensor(ends, dtype=torch.long, device=logp.device)
                found.end_logp = torch.logsumexp(logp[-1, ids], dim=0).item()
                found.end_best = bool(torch.isin(logp[-1].argmax(), ids))
            out.append(found)
        return out

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop=()) -> list[list[int]]:
        fit = self.fit
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), fit.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: prompts end together
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        generated = fit.model.generate(
            input_ids=ids.to(fit.device),
            attention_mask=mask.to(fit.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=fit.pad,
            eos_token_id=fit.eos_ids or None,
            stopping_criteria=stop_criteria(fit.tokenizer, width, stop),
        )[:, width:].cpu()
        return [row.tolist() for row in generated]
